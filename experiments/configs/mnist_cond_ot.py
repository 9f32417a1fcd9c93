"""MNIST-5k (CPU) with the Cond-OT path x_t = t x1 + (1 − t) x0 (Lipman et al. 2023)."""

from experiments.configs.image_base import mnist


def get_config():
    return mnist("cond_ot")
