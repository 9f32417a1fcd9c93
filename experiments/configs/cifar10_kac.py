"""CIFAR-10 paper settings (GPU/TPU) with the Kac-flow path (telegrapher's generative model, Duong et al.)."""

from experiments.configs.image_base import cifar10


def get_config():
    return cifar10("kac")
