"""CIFAR-10 paper settings (GPU/TPU) with the variance-preserving path (score SDE VP schedule as an affine path)."""

from experiments.configs.image_base import cifar10


def get_config():
    return cifar10("vp")
