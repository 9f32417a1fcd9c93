"""CIFAR-10 paper settings (GPU/TPU) with the Kac-flow path (telegrapher's generative model, Duong et al.)."""

from experiments.configs.image_base import cifar10


def get_config():
    return cifar10("kac_a25_c2")  # the paper's CIFAR-10 setting a = 25, c = 2
