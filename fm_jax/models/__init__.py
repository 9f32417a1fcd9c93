"""Flax NNX models and the one adapter that turns a model into `apply(params, z, t)`."""

from .adapter import as_apply as as_apply
from .mlp import MLP as MLP
from .mlp import ClassEmbedding as ClassEmbedding
from .mlp import fourier_time_embedding as fourier_time_embedding
from .unet import UNet as UNet
