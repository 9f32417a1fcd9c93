"""CIFAR-10 paper settings (GPU/TPU) with the ForM generative (relativistic force-matching) path."""

from experiments.configs.image_base import cifar10


def get_config():
    return cifar10("form", c=443.0, event_ndim=3)  # one particle per image, c ≈ 8·sqrt(3072)
