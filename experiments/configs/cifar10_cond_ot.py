"""CIFAR-10 paper settings (GPU/TPU) with the Cond-OT path x_t = t x1 + (1 − t) x0 (Lipman et al. 2023)."""

from experiments.configs.image_base import cifar10


def get_config():
    return cifar10("cond_ot")
