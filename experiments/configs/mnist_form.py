"""MNIST-5k (CPU) with the ForM generative (relativistic force-matching) path."""

from experiments.configs.image_base import mnist


def get_config():
    return mnist("form", c=224.0, event_ndim=3)  # one particle per image, c = 8·sqrt(784)
