"""MNIST-5k (CPU) with the Kac-flow path (telegrapher's generative model, Duong et al.)."""

from experiments.configs.image_base import mnist


def get_config():
    return mnist("kac")
