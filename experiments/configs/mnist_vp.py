"""MNIST-5k (CPU) with the variance-preserving path (score SDE VP schedule as an affine path)."""

from experiments.configs.image_base import mnist


def get_config():
    return mnist("vp")
