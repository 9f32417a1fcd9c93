"""MNIST-5k (CPU) with the Oscillation Hamiltonian generative flow (harmonic force)."""

from experiments.configs.image_base import mnist


def get_config():
    return mnist("hgf_osc", alpha=1.0, sigma_v=1.0)
