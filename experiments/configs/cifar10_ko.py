"""CIFAR-10 paper settings (GPU/TPU) with the kinetic-optimal path (Shaul et al., KO paths paper)."""

from experiments.configs.image_base import cifar10


def get_config():
    return cifar10("ko")
