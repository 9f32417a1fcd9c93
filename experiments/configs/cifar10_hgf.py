"""CIFAR-10 paper settings (GPU/TPU) with the Oscillation Hamiltonian generative flow (harmonic force)."""

from experiments.configs.image_base import cifar10


def get_config():
    return cifar10("hgf")
