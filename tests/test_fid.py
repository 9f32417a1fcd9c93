"""FID in one module: the Fréchet distance against scipy, closed forms and pytorch-fid's own function; batched
statistics (Chan's merge, padding to one compilation); FID of identical sets; reference statistics cached beside
the dataset and recomputed when the feature network changes."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import sys
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from fm_jax import fid as F


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d in (1, 3, 8):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        root = scipy.linalg.sqrtm(s1 @ s2).real
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)
        with jax.enable_x64(True):
            got = float(F.frechet_distance(mu1, s1, mu2, s2))
        # Both are float64 evaluations of the same quantity: agreement to rounding (well-conditioned matrices).
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)


def test_frechet_distance_closed_forms():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    with jax.enable_x64(True):
        # Commuting (diagonal) covariances: ||Δμ||² + Σ (√a − √b)².
        got = float(F.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)))
        same = float(F.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)))
    np.testing.assert_allclose(got, 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rtol=1e-12)
    assert abs(same) < 1e-12
    with pytest.raises(ValueError, match="shapes"):
        F.frechet_distance(mu1, np.eye(3), mu2[:2], np.eye(2))
    # jit-able, and float32 without x64.
    got32 = float(jax.jit(F.frechet_distance)(jnp.asarray(mu1, jnp.float32), jnp.diag(jnp.asarray(a, jnp.float32)),
                                              jnp.asarray(mu2, jnp.float32), jnp.diag(jnp.asarray(b, jnp.float32))))
    np.testing.assert_allclose(got32, got, rtol=1e-5)


@contextlib.contextmanager
def _forgetting(*prefixes: str):
    """Remove the modules named `prefix*` from `sys.modules` on exit (objects imported stay usable)."""
    try:
        yield
    finally:
        for name in [n for n in sys.modules if any(n == p or n.startswith(p + ".") for p in prefixes)]:
            del sys.modules[name]


def _pytorch_fid_frechet_distance():
    """pytorch-fid's own `calculate_frechet_distance` (scipy `sqrtm`, its ε fallback).

    Its module `fid_score` imports torchvision for image loading only; where torchvision is not importable (the
    PyPI wheel does not load beside the local CPU torch), stand-in modules satisfy those imports. The function
    under test uses only NumPy and SciPy.
    """
    try:
        import torch
    except ImportError:
        pytest.skip("PyTorch is not importable: pytorch-fid needs it (pip install torch==2.13.0)")
    if importlib.util.find_spec("pytorch_fid") is None:
        pytest.fail("pytorch-fid is not installed: pip install --no-deps pytorch-fid==0.3.0")
    try:
        from pytorch_fid import fid_score

        return fid_score.calculate_frechet_distance
    except Exception:  # torchvision missing, or installed but not loadable beside this torch
        pass
    with _forgetting("pytorch_fid", "torchvision"):
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.models = types.ModuleType("torchvision.models")
        tv.models.inception = types.ModuleType("torchvision.models.inception")
        for block in ("InceptionA", "InceptionC", "InceptionE"):  # base classes pytorch-fid subclasses
            setattr(tv.models.inception, block, type(block, (torch.nn.Module,), {}))
        for m in (tv, tv.transforms, tv.models, tv.models.inception):
            sys.modules[m.__name__] = m
        return importlib.import_module("pytorch_fid.fid_score").calculate_frechet_distance


def _relu_features(rng, n, d, shift):
    """Inception-like features: non-negative, correlated (rank-64 factor plus noise)."""
    a = rng.normal(size=(d, 64)) / 8
    return np.maximum(rng.normal(size=(n, 64)) @ a.T + 0.3 * rng.normal(size=(n, d)) + shift, 0.0)


def test_fid_agrees_with_pytorch_fid():
    """Same statistics, our eigen form vs pytorch-fid's sqrtm: ≤ 1e-6 relative, for full-rank covariances (n > d)
    and rank-deficient ones (n < d, as in small-sample FIDs). d = 256 keeps scipy's sqrtm fast; at d = 2048 the
    agreement measured 5e-8 (n = 500) and 1e-15 (n = 4000)."""
    frechet = _pytorch_fid_frechet_distance()
    rng = np.random.default_rng(0)
    d = 256
    for n in (2000, 100):
        a = F.feature_statistics_from_features(_relu_features(rng, n, d, 0.1))
        b = F.feature_statistics_from_features(_relu_features(rng, n, d, 0.2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its `disp=False` on SciPy ≥ 1.16
            theirs = float(frechet(a.mean, a.cov, b.mean, b.cov))
        ours = F.fid_from_statistics(a, b)
        assert abs(ours - theirs) <= 1e-6 * abs(theirs), (n, ours, theirs)


def test_merge_statistics_is_the_covariance_of_the_union():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(301, 5)) * np.arange(1, 6) + 100.0  # a large mean: the merge must not cancel
    parts = [f[:1], f[1:128], f[128:300], f[300:]]
    stats = F.feature_statistics_from_features(parts[1])
    for p in (parts[0], parts[2], parts[3]):
        stats = F.merge_statistics(stats, F.FeatureStatistics(p.mean(0), np.cov(p, rowvar=False).reshape(5, 5)
                                                              if len(p) > 1 else np.zeros((5, 5)), len(p)))
    full = F.feature_statistics_from_features(f)
    assert stats.count == 301
    np.testing.assert_allclose(stats.mean, full.mean, rtol=1e-13)
    np.testing.assert_allclose(stats.cov, full.cov, rtol=1e-10, atol=1e-12)


def test_feature_statistics_in_batches_compile_once():
    proj = jax.random.normal(jax.random.key(0), (4 * 4 * 1, 6))
    features = jax.jit(lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ proj))
    images = np.asarray(jax.random.uniform(jax.random.key(1), (300, 4, 4, 1), minval=-1, maxval=1))
    stats = F.feature_statistics(images, features, batch_size=128)  # batches 128, 128, 44 (padded to 128)
    assert features._cache_size() == 1
    direct = F.feature_statistics_from_features(np.asarray(features(images), np.float64))
    assert stats.count == 300
    np.testing.assert_allclose(stats.mean, direct.mean, rtol=1e-5, atol=1e-7)  # float32 features, other batching
    np.testing.assert_allclose(stats.cov, direct.cov, rtol=1e-5, atol=1e-7)
    # An iterable of loader-style batches gives the same statistics.
    batches = ({"image": images[i : i + 100], "label": None} for i in range(0, 300, 100))
    again = F.feature_statistics(batches, features)
    np.testing.assert_allclose(again.cov, stats.cov, rtol=1e-5, atol=1e-7)
    assert F.compute_features(images, features, batch_size=128).shape == (300, 6)
    with pytest.raises(ValueError, match="at least 2"):
        F.feature_statistics(images[:1], features)


def test_fid_identical_sets_is_zero_and_sees_a_shift():
    proj = jax.random.normal(jax.random.key(0), (4 * 4 * 1, 6))
    features = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ proj)  # noqa: E731 (any feature network)
    images = np.asarray(jax.random.uniform(jax.random.key(1), (300, 4, 4, 1), minval=-1, maxval=1))
    ref = F.feature_statistics(images, features, batch_size=128)
    assert ref.count == 300 and ref.cov.shape == (6, 6)
    # Same images: FID 0 up to float32 features and the eigen-decomposition's rounding.
    assert abs(F.fid(images, ref, features, batch_size=128)) < 1e-4
    shifted = np.clip(images + 0.5, -1, 1)
    assert F.fid(shifted, ref, features) > 0.1
    assert math.isnan(F.fid(np.full_like(images, np.nan), ref, features))


def test_fid_with_fewer_samples_than_features_is_the_full_formula():
    # n − 1 < F: the n×n low-rank form must equal the F×F formula (same eigenvalues, exactly in exact arithmetic).
    rng = np.random.default_rng(0)
    ref_feats = rng.normal(size=(80, 40)) @ rng.normal(size=(40, 40))
    ref = F.feature_statistics_from_features(ref_feats)
    for n in (2, 9, 40):
        f = rng.normal(size=(n, 40)) * 0.7 + 0.3
        full = F.fid_from_statistics(F.feature_statistics_from_features(f), ref)
        # float64 on both sides. The F×F route takes square roots of the rounding-level (~1e-16) eigenvalues of the
        # singular product, each ~1e-8: F of them bound its error by ~F·1e-8 absolute (~1e-7 relative here).
        np.testing.assert_allclose(F.fid_from_features(f, ref), full, rtol=1e-7)
    # fid() takes that route for few samples (8 images, 16 features) and matches the statistics route.
    proj = jax.random.normal(jax.random.key(0), (4 * 4 * 1, 16))
    features = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ proj)  # noqa: E731
    images = np.asarray(jax.random.uniform(jax.random.key(1), (8, 4, 4, 1), minval=-1, maxval=1))
    ref2 = F.feature_statistics(np.asarray(jax.random.uniform(jax.random.key(2), (50, 4, 4, 1), minval=-1,
                                                              maxval=1)), features)
    direct = F.fid_from_statistics(F.feature_statistics(images, features), ref2)
    np.testing.assert_allclose(F.fid(images, ref2, features), direct, rtol=1e-6)  # float32 features, two routes


def test_reference_statistics_cache(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return F.feature_statistics_from_features(np.random.default_rng(len(calls)).normal(size=(50, 3)))

    f = str(tmp_path / "ref.npz")
    a = F.cached_reference_statistics(f, "data/v1", compute)
    b = F.cached_reference_statistics(f, "data/v1", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.cov, b.cov)
    c = F.cached_reference_statistics(f, "data/v2", compute)  # another fingerprint: stale cache recomputed
    assert len(calls) == 2 and not np.array_equal(a.mean, c.mean)


def test_dataset_reference_statistics_are_cached_beside_the_dataset(tmp_path):
    from fm_jax.data import images as image_data

    data_dir = str(tmp_path / "tfds")
    proj = jax.random.normal(jax.random.key(0), (8 * 8, 4))
    calls = []

    def features(x):
        calls.append(len(x))
        return jnp.tanh(x.reshape(x.shape[0], -1) @ proj)

    net = F.FeatureNetwork(features, "proj", "weights-v1")
    stats = F.dataset_reference_statistics("sklearn_digits", "train", net, data_dir=data_dir, batch_size=256)
    path = F.reference_statistics_path(data_dir, "sklearn_digits", "train", net)
    assert path == os.path.join(data_dir, "sklearn_digits", "fid_stats", "train.proj.npz") and os.path.exists(path)
    x, _ = image_data.load_arrays("sklearn_digits", "train", data_dir)
    direct = F.feature_statistics_from_features(features(image_data.dequantize(x, 0.5, 17)))
    assert stats.count == len(x)
    np.testing.assert_allclose(stats.cov, direct.cov, rtol=1e-5, atol=1e-7)
    calls.clear()
    again = F.dataset_reference_statistics("sklearn_digits", "train", net, data_dir=data_dir, batch_size=256)
    assert calls == [] and np.array_equal(again.cov, stats.cov)  # read from the cache
    changed = F.FeatureNetwork(lambda x: 2 * features(x), "proj", "weights-v2")  # same name, new weights
    new = F.dataset_reference_statistics("sklearn_digits", "train", changed, data_dir=data_dir, batch_size=256)
    assert calls and np.allclose(new.cov, 4 * stats.cov, rtol=1e-5, atol=1e-7)

