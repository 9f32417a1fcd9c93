"""The FID Inception-v3 (Flax NNX, NHWC): the 2015-12-05 TensorFlow network behind every published FID.

FID (Heusel et al. 2017) is computed on the 2048-d "pool3" features of one specific network: the Inception-v3
graph `inception-2015-12-05` released with TensorFlow, which pytorch-fid (Seitzer 2020) and torch-fidelity
(Obukhov et al.) port to PyTorch. It differs from the ImageNet Inception-v3 of Szegedy et al. (2016) in its
weights and in three details, all reproduced here:
- the average pools inside the mixed blocks 5b–5d, 6b–6e and 7b exclude the zero padding from the mean
  (TensorFlow's `avg_pool`; `count_include_pad=False` in PyTorch);
- the last block (7c) pools its fourth branch with a 3×3 *max* pool instead of an average pool;
- the classifier has 1008 classes (unused for FID).

Layout: images and feature maps are NHWC, kernels HWIO. Module and attribute names follow the PyTorch state dict
(`Mixed_5b.branch5x5_2.conv.weight` is `Mixed_5b.branch5x5_2.conv.kernel` here), so the weights convert by name.

Input pipeline of pytorch-fid (`preprocess`): an image in [0, 1] is resized to 299×299 by bilinear interpolation
with half-pixel centres and no antialiasing (`F.interpolate(mode="bilinear", align_corners=False)`), then mapped
to [−1, 1] by 2x − 1. Resizing is linear and preserves constants, so for fm_jax images x ∈ [−1, 1] this is
resize(x) with the same weights: `preprocess(x, HalfPixelBilinear())`. torch-fidelity resizes like
TensorFlow 1 (`TF1Bilinear()`: source coordinate = dst · in/out, no half-pixel shift) and maps uint8 k to
(k − 128)/128. With `quantize=True` the input is first rounded to the 8-bit image a sampler would save as PNG:
k = clip(floor((x + 1)·128), 0, 255) (the inverse of `fm_jax.data.images.dequantize`), then x = 2k/255 − 1, the
value pytorch-fid reads from that PNG.

Weights: fm_jax never downloads them. Fetch pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` from
`PYTORCH_FID_WEIGHTS_URL` yourself and convert it once (needs PyTorch, CPU build suffices):
    python -m fm_jax.models.convert_inception pt_inception-2015-12-05-6726825d.pth ~/.cache/fm_jax/inception_v3_fid.npz
`load_fid_inception(path)` reads the .npz (no PyTorch needed). torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth` holds the same state dict and converts the same way.

References: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016;
Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import os
from collections.abc import Callable, Mapping
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .._typing import Array

PYTORCH_FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
INCEPTION_WEIGHTS_ENV = "FM_JAX_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
NUM_FEATURES = 2048
_FORMAT = "fm_jax.fid_inception_v3/1"

PoolFn = Callable[[Array], Array]


# --------------------------------------------------------------------------------------------------------------
# Input pipeline


class AbstractResize(eqx.Module):
    """Separable linear resize of NHWC images to `size`×`size`: out = R_h · x · R_wᵀ per channel."""

    @abc.abstractmethod
    def source_coordinates(self, in_size: int, out_size: int) -> np.ndarray:
        """Continuous source pixel index (out_size,) (pixel k covers [k, k+1), sampled at its index) per output."""

    def matrix(self, in_size: int, out_size: int) -> np.ndarray:
        """Interpolation matrix (out_size, in_size): two-tap bilinear weights, rows summing to 1."""
        src = np.clip(self.source_coordinates(in_size, out_size), 0.0, in_size - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, in_size - 1)
        frac = src - lo
        m = np.zeros((out_size, in_size))
        rows = np.arange(out_size)
        np.add.at(m, (rows, lo), 1.0 - frac)
        np.add.at(m, (rows, hi), frac)
        return m.astype(np.float32)

    def __call__(self, x: Array, size: int = INPUT_SIZE) -> Array:
        """x (B, H, W, C) → (B, size, size, C)."""
        h, w = x.shape[1], x.shape[2]
        hi = jax.lax.Precision.HIGHEST  # exact float32 weights on every backend (no bf16/TF32 passes)
        if h != size:
            x = jnp.einsum("oh,bhwc->bowc", self.matrix(h, size), x, precision=hi)
        if w != size:
            x = jnp.einsum("pw,bhwc->bhpc", self.matrix(w, size), x, precision=hi)
        return x


class HalfPixelBilinear(AbstractResize):
    """Bilinear with half-pixel centres, no antialiasing: PyTorch `F.interpolate(mode="bilinear",
    align_corners=False)`, the resize of pytorch-fid. Source coordinate (dst + ½)·in/out − ½, clamped at 0."""

    def source_coordinates(self, in_size: int, out_size: int) -> np.ndarray:
        # PyTorch computes the scale and coordinates in float32 for float32 images; so do we.
        scale = np.float32(in_size) / np.float32(out_size)
        src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        return np.maximum(src, 0.0).astype(np.float64)


class TF1Bilinear(AbstractResize):
    """TensorFlow 1 `resize_bilinear(align_corners=False)`: source coordinate dst · in/out (no half-pixel shift),
    the resize of torch-fidelity and of the original TensorFlow FID code."""

    def source_coordinates(self, in_size: int, out_size: int) -> np.ndarray:
        scale = np.float32(in_size / out_size)
        return (np.arange(out_size, dtype=np.float32) * scale).astype(np.float64)


def quantize_to_uint8_levels(x: Array) -> Array:
    """Round images in [−1, 1] to the 8-bit levels a sampler saves as PNG, in pytorch-fid's scaling.

    k = clip(floor((x + 1)·128), 0, 255) (inverse of `fm_jax.data.images.dequantize`), returned as 2k/255 − 1.
    """
    k = jnp.clip(jnp.floor((x + 1.0) * 128.0), 0.0, 255.0)
    return k * (2.0 / 255.0) - 1.0


def preprocess(images: Array, resize: AbstractResize | None = HalfPixelBilinear(), *, quantize: bool = False
               ) -> Array:
    """Images (B, H, W, C) in [−1, 1], C ∈ {1, 3} → network input (B, 299, 299, 3) (pytorch-fid's pipeline).

    Grey images are repeated to three channels (as pytorch-fid's `Image.convert("RGB")`); `resize=None` keeps the
    size (the network needs H, W ≥ 75).
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected NHWC images (B, H, W, 1 or 3), got shape {images.shape}")
    x = images.astype(jnp.float32)
    if quantize:
        x = quantize_to_uint8_levels(x)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return x if resize is None else resize(x)


# --------------------------------------------------------------------------------------------------------------
# The network


def _pad(p: int | tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    ph, pw = (p, p) if isinstance(p, int) else p
    return ((ph, ph), (pw, pw))


class BasicConv2d(nnx.Module):
    """Convolution without bias → BatchNorm (ε = 10⁻³, running statistics) → ReLU.

    Call: x (B, H, W, in_channels) → (B, H', W', out_channels).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], *, stride: int = 1,
                 padding: int | tuple[int, int] = 0, precision, rngs: nnx.Rngs):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.conv = nnx.Conv(in_channels, out_channels, ks, strides=stride, padding=_pad(padding), use_bias=False,
                             precision=precision, rngs=rngs)
        self.bn = nnx.BatchNorm(out_channels, epsilon=1e-3, use_running_average=True, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def avg_pool_3x3_exclude_pad(x: Array) -> Array:
    """3×3 average pool, stride 1, padding 1, the mean taken over the in-image pixels only (TensorFlow's)."""
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_same(x: Array) -> Array:
    """3×3 max pool, stride 1, padding 1 (the padding never wins)."""
    return nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_stride2(x: Array) -> Array:
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nnx.Module):
    """Mixed 5b–5d (35×35): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool (padding excluded)→1×1; 224 + pool channels."""

    def __init__(self, in_channels: int, pool_features: int, *, precision, rngs: nnx.Rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch1x1 = BasicConv2d(in_channels, 64, 1, **c)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1, **c)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, **c)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, **c)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **c)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, **c)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1, **c)

    def __call__(self, x: Array) -> Array:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Mixed 6a (35×35 → 17×17): 3×3/2 | 1×1→3×3→3×3/2 | max-pool 3×3/2; 480 + in channels."""

    def __init__(self, in_channels: int, *, precision, rngs: nnx.Rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2, **c)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, **c)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **c)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, **c)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed 6b–6e (17×17): factorised 7×7 convolutions (1×7 and 7×1) and an avg-pool branch; 768 channels."""

    def __init__(self, in_channels: int, channels_7x7: int, *, precision, rngs: nnx.Rngs):
        c = dict(precision=precision, rngs=rngs)
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1, **c)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1, **c)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **c)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), **c)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1, **c)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **c)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **c)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **c)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), **c)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, **c)

    def __call__(self, x: Array) -> Array:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([self.branch1x1(x), b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """Mixed 7a (17×17 → 8×8): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool 3×3/2; 512 + in channels."""

    def __init__(self, in_channels: int, *, precision, rngs: nnx.Rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1, **c)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, **c)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1, **c)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), **c)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), **c)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, **c)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed 7b/7c (8×8): 1×1 | 1×1→(1×3 ‖ 3×1) | 1×1→3×3→(1×3 ‖ 3×1) | pool→1×1; 2048 channels.

    `pool` is `avg_pool_3x3_exclude_pad` in 7b and `max_pool_3x3_same` in 7c (the FID network's quirk).
    """

    def __init__(self, in_channels: int, *, pool: PoolFn, precision, rngs: nnx.Rngs):
        c = dict(precision=precision, rngs=rngs)
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1, **c)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1, **c)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **c)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **c)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1, **c)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, **c)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **c)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **c)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, **c)

    def __call__(self, x: Array) -> Array:
        h3 = self.branch3x3_1(x)
        hd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch3x3_2a(h3), self.branch3x3_2b(h3),
            self.branch3x3dbl_3a(hd), self.branch3x3dbl_3b(hd),
            self.branch_pool(self.pool(x)),
        ], axis=-1)


class FIDInceptionV3(nnx.Module):
    """The FID Inception-v3 up to its pool3 features: x (B, H, W, 3) at network scale [−1, 1] → (B, 2048).

    H = W = 299 in the FID protocol (see `preprocess`); the network is fully convolutional and accepts
    H, W ≥ 75. Feature map sizes at 299: 149, 147, 147, pool 73, 73, 71, pool 35, Mixed 5b–5d 35, 6a–6e 17,
    7a–7c 8, then the spatial mean. Evaluation only (BatchNorm uses its running statistics).

    `precision` is that of every convolution; the default `HIGHEST` keeps float32 accuracy on GPUs and TPUs
    (whose default float32 convolutions use TF32 / bfloat16 passes).
    """

    def __init__(self, *, precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST, rngs: nnx.Rngs):
        c = dict(precision=precision, rngs=rngs)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, **c)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, **c)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, **c)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, **c)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, **c)
        self.Mixed_5b = InceptionA(192, 32, **c)
        self.Mixed_5c = InceptionA(256, 64, **c)
        self.Mixed_5d = InceptionA(288, 64, **c)
        self.Mixed_6a = InceptionB(288, **c)
        self.Mixed_6b = InceptionC(768, 128, **c)
        self.Mixed_6c = InceptionC(768, 160, **c)
        self.Mixed_6d = InceptionC(768, 160, **c)
        self.Mixed_6e = InceptionC(768, 192, **c)
        self.Mixed_7a = InceptionD(768, **c)
        self.Mixed_7b = InceptionE(1280, pool=avg_pool_3x3_exclude_pad, **c)
        self.Mixed_7c = InceptionE(2048, pool=max_pool_3x3_same, **c)

    def __call__(self, x: Array) -> Array:
        if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 75:
            raise ValueError(f"FIDInceptionV3 needs NHWC RGB images of at least 75×75, got shape {x.shape} "
                             "(use `preprocess` to resize to 299×299)")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool_3x3_stride2(x)
        x = _max_pool_3x3_stride2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return jnp.mean(x, axis=(1, 2))


# --------------------------------------------------------------------------------------------------------------
# Weights: conversion from the PyTorch state dict, loading


def _abstract_model(precision=jax.lax.Precision.HIGHEST) -> FIDInceptionV3:
    return nnx.merge(*_abstract_split(precision))


@functools.cache
def _abstract_split(precision) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of shapes) of the network, traced once per precision (building it costs seconds)."""
    return nnx.split(nnx.eval_shape(lambda: FIDInceptionV3(precision=precision, rngs=nnx.Rngs(0))))


@functools.cache
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _flat_state(_abstract_model()).items()}


def _flat_state(model: FIDInceptionV3) -> dict[str, jax.ShapeDtypeStruct | Array]:
    """{"Mixed_5b.branch1x1.conv.kernel": leaf, ...} of the model's parameters and batch statistics."""
    flat = nnx.to_flat_state(nnx.state(model))
    return {".".join(str(k) for k in path): v.get_value() for path, v in flat}


_TORCH_TO_OURS = {"conv.weight": "conv.kernel", "bn.weight": "bn.scale", "bn.bias": "bn.bias",
                  "bn.running_mean": "bn.mean", "bn.running_var": "bn.var"}


def state_dict_to_arrays(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the FID Inception's PyTorch state dict (name → array, NCHW/OIHW) to this network's arrays (HWIO).

    `conv.weight` (O, I, kh, kw) → `conv.kernel` (kh, kw, I, O); BatchNorm `weight, bias, running_mean,
    running_var` → `scale, bias, mean, var`. The classifier `fc.*` and `num_batches_tracked` are dropped.

    Raises:
        ValueError: a parameter is missing, has the wrong shape, or the dict holds names this network does not
            have (e.g. torchvision's ImageNet Inception-v3 with its `AuxLogits`, which is not the FID network).
    """
    expected = _expected_shapes()
    out, unknown = {}, []
    for name, value in state_dict.items():
        if name.endswith("num_batches_tracked") or name.startswith("fc."):
            continue
        module, _, leaf = name.rpartition(".")
        module, _, layer = module.rpartition(".")
        ours = f"{module}.{_TORCH_TO_OURS.get(f'{layer}.{leaf}', '?')}"
        if ours not in expected:
            unknown.append(name)
            continue
        a = np.asarray(value, np.float32)
        out[ours] = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a
    missing = sorted(set(expected) - set(out))
    wrong = sorted(k for k in out if tuple(out[k].shape) != expected[k])
    if unknown or missing or wrong:
        hint = " (AuxLogits: this is torchvision's ImageNet Inception-v3, not the FID network)" \
            if any(n.startswith("AuxLogits") for n in unknown) else ""
        raise ValueError(
            "not the FID Inception-v3 state dict: "
            + "; ".join(f"{what}: {names[:5]}{' …' if len(names) > 5 else ''} ({len(names)})"
                        for what, names in (("unknown", unknown), ("missing", missing), ("wrong shape", wrong))
                        if names) + hint)
    return out


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_pytorch_fid_weights(pth_path: str, out_path: str) -> str:
    """Convert pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` into the .npz that `load_fid_inception` reads.

    Needs PyTorch (`pip install torch`; the CPU build suffices) for reading the .pth; nothing else does. The .npz
    holds one float32 array per parameter under this network's names, plus the source file's SHA-256 (pytorch-fid's
    file name carries its first 8 hex digits, 6726825d). Returns `out_path`.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError("converting the .pth file needs PyTorch: `pip install torch` (CPU build is enough); "
                          "the converted .npz is then read without it") from e
    if not os.path.exists(pth_path):
        raise FileNotFoundError(_missing_message(pth_path, what="PyTorch weights file"))
    state = torch.load(pth_path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{pth_path!r} does not hold a state dict (got {type(state).__name__})")
    arrays = state_dict_to_arrays({k: v.detach().cpu().numpy() for k, v in state.items() if torch.is_tensor(v)})
    return write_fid_inception_weights(arrays, out_path, source_sha256=_file_sha256(pth_path))


def fid_inception_shapes() -> dict[str, tuple[int, ...]]:
    """{name: shape} of every array a weights file holds (`Mixed_5b.branch1x1.conv.kernel`: HWIO, BatchNorm
    `scale`, `bias`, `mean`, `var`)."""
    return dict(_expected_shapes())


def write_fid_inception_weights(arrays: Mapping[str, np.ndarray], out_path: str, *, source_sha256: str) -> str:
    """Write this network's arrays (names and shapes of `fid_inception_shapes()`) as the .npz `load_fid_inception`
    reads, recording `source_sha256` (the converted file's; anything else, e.g. "random", for weights made
    otherwise). Written atomically; returns `out_path`."""
    expected = _expected_shapes()
    wrong = sorted(k for k in expected if k not in arrays or tuple(np.shape(arrays[k])) != expected[k])
    if wrong or set(arrays) - set(expected):
        raise ValueError(f"arrays do not match FIDInceptionV3: missing or wrong shape {wrong[:5]}, unknown "
                         f"{sorted(set(arrays) - set(expected))[:5]}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp.npz"
    np.savez(tmp, __format__=_FORMAT, __source_sha256__=source_sha256,
             **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
    os.replace(tmp, out_path)
    return out_path


def default_inception_weights_path() -> str:
    """`$FM_JAX_INCEPTION_WEIGHTS` if set, else `~/.cache/fm_jax/inception_v3_fid.npz`."""
    return os.environ.get(INCEPTION_WEIGHTS_ENV) or os.path.expanduser("~/.cache/fm_jax/inception_v3_fid.npz")


def _missing_message(path: str, what: str = "FID Inception-v3 weights") -> str:
    return (
        f"{what} not found at {path!r}. fm_jax does not download them: fetch pytorch-fid's "
        f"{PYTORCH_FID_WEIGHTS_FILE} yourself from {PYTORCH_FID_WEIGHTS_URL} and convert it once (needs PyTorch): "
        f"`python -m fm_jax.models.convert_inception {PYTORCH_FID_WEIGHTS_FILE} {default_inception_weights_path()}`; "
        f"then pass its path or set ${INCEPTION_WEIGHTS_ENV}. For CPU-sized runs without it, use the MNIST "
        "classifier features (`fm_jax.image_metrics.mnist_feature_fn`)."
    )


class InceptionWeights(NamedTuple):
    """Loaded FID Inception weights: the model and a fingerprint of its arrays (SHA-256 prefix, 16 hex digits)."""

    model: FIDInceptionV3
    fingerprint: str


def load_fid_inception(path: str | None = None, *,
                       precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST) -> InceptionWeights:
    """Build `FIDInceptionV3` from a converted .npz (`convert_pytorch_fid_weights`); no PyTorch needed.

    `path` defaults to `default_inception_weights_path()`.

    Raises:
        FileNotFoundError: no file at the path (the message says where to get the weights and how to convert).
        ValueError: the file is a PyTorch .pth (convert it first) or does not hold the FID network's arrays.
    """
    path = os.path.expanduser(path or default_inception_weights_path())
    if not os.path.exists(path):
        raise FileNotFoundError(_missing_message(path))
    if path.endswith((".pth", ".pt")):
        raise ValueError(f"{path!r} is a PyTorch file; convert it once with "
                         f"`python -m fm_jax.models.convert_inception {path} out.npz` and load the .npz")
    with np.load(path) as f:
        if "__format__" not in f.files or str(f["__format__"]) != _FORMAT:
            raise ValueError(f"{path!r} is not an fm_jax FID Inception weights file (format {_FORMAT}); "
                             "create it with `python -m fm_jax.models.convert_inception`")
        arrays = {k: f[k] for k in f.files if not k.startswith("__")}
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(arrays))
    wrong = sorted(k for k in expected if k in arrays and arrays[k].shape != expected[k])
    if missing or wrong:
        raise ValueError(f"{path!r} does not match FIDInceptionV3: missing {missing[:5]}, wrong shape {wrong[:5]}")
    h = hashlib.sha256()
    for name in sorted(expected):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name], np.float32).tobytes())
    graphdef, abstract = _abstract_split(precision)
    flat = [(p, v.replace(jnp.asarray(arrays[".".join(str(k) for k in p)]))) for p, v in nnx.to_flat_state(abstract)]
    return InceptionWeights(nnx.merge(graphdef, nnx.from_flat_state(flat)), h.hexdigest()[:16])


__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "NUM_FEATURES",
    "PYTORCH_FID_WEIGHTS_FILE",
    "PYTORCH_FID_WEIGHTS_URL",
    "AbstractResize",
    "FIDInceptionV3",
    "HalfPixelBilinear",
    "InceptionWeights",
    "TF1Bilinear",
    "convert_pytorch_fid_weights",
    "default_inception_weights_path",
    "fid_inception_shapes",
    "load_fid_inception",
    "preprocess",
    "quantize_to_uint8_levels",
    "state_dict_to_arrays",
    "write_fid_inception_weights",
]
