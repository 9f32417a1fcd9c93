"""Flax NNX models, the one adapter that turns a model into `apply(params, z, t)` (and its bfloat16 wrapper
`mixed_precision`), and the FID Inception-v3."""

from . import inception as inception
from .adapter import as_apply as as_apply
from .adapter import mixed_precision as mixed_precision
from .inception import FIDInceptionV3 as FIDInceptionV3
from .inception import convert_pytorch_fid_weights as convert_pytorch_fid_weights
from .inception import load_fid_inception as load_fid_inception
from .mlp import MLP as MLP
from .mlp import ClassEmbedding as ClassEmbedding
from .mlp import fourier_time_embedding as fourier_time_embedding
from .mnist_classifier import MnistClassifier as MnistClassifier
from .unet import UNet as UNet
