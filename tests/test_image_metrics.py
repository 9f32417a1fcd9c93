"""Image metrics: the MNIST-classifier cache, bits/dim; and `fm_jax.sampling`'s divergences as bits/dim uses them
(Hutchinson vs exact divergence and likelihood). The FID tests are in test_fid.py and test_inception.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np

import fm_jax as fj
from fm_jax import image_metrics as M
from fm_jax import sampling as S
from fm_jax.models import mnist_classifier


def test_mnist_classifier_trains_and_caches(tmp_path, monkeypatch):
    data_dir, work = str(tmp_path / "tfds"), str(tmp_path / "work")
    net = M.mnist_feature_fn(work, data_dir=data_dir, steps=30)
    assert 0.0 <= net.accuracy <= 1.0
    x = jnp.zeros((3, 28, 28, 1))
    assert net.features(x).shape == (3, 64)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(mnist_classifier, "train_mnist_classifier", no_training)
    again = M.mnist_feature_fn(work, data_dir=data_dir, steps=30)
    assert again.fingerprint == net.fingerprint and again.accuracy == net.accuracy
    np.testing.assert_allclose(again.features(x), net.features(x), atol=1e-6)


def test_hutchinson_estimator_is_unbiased():
    """Mean of n Rademacher probes vs the exact trace, within 5 standard errors (per-probe variance for a
    Jacobian A: Σ_{i≠j} A_ij (A_ij + A_ji), computed here exactly)."""
    with jax.enable_x64(True):
        a = jax.random.normal(jax.random.key(0), (5, 5), jnp.float64)
        f = lambda x: jnp.tanh(a @ x) + 0.3 * x**2  # noqa: E731
        x = jnp.linspace(-0.5, 0.5, 5)
        value, exact = S.Exact().value_and_divergence(f, x, S.Exact().probes(None, x))
        np.testing.assert_allclose(value, f(x), rtol=1e-12)  # the value comes from the same evaluation
        exact = float(exact)
        jac = np.asarray(jax.jacfwd(f)(x))
        np.testing.assert_allclose(exact, np.trace(jac), rtol=1e-12)
        off = jac - np.diag(np.diag(jac))
        var = float(np.sum(off * (off + off.T)))
        n = 20_000
        hutch = S.Hutchinson(n)
        probes = hutch.probes(jax.random.key(1), x)
        assert probes.shape == (n, 5) and set(np.unique(np.asarray(probes))) == {-1.0, 1.0}  # Rademacher
        value, est = hutch.value_and_divergence(f, x, probes)
        np.testing.assert_allclose(value, f(x), rtol=1e-12)
        est = float(est)
        assert abs(est - exact) < 5 * math.sqrt(var / n), (est, exact, math.sqrt(var / n))
        # Diagonal Jacobian: Rademacher probes are exact with one probe.
        g = lambda x: jnp.sin(x) * jnp.arange(1.0, 6.0)  # noqa: E731
        one = S.Hutchinson(1)
        np.testing.assert_allclose(float(one.value_and_divergence(g, x, one.probes(jax.random.key(2), x))[1]),
                                   float(S.Exact().value_and_divergence(g, x, None)[1]), rtol=1e-12)


def _diagonal_model(params, z, t):
    """u(z, t) = (a + b t) ⊙ z: a per-example model with a diagonal Jacobian (Hutchinson is exact for it)."""
    return z * (params["a"] + params["b"] * jnp.reshape(t, (-1,) + (1,) * (z.ndim - 1)))


def test_hutchinson_likelihood_matches_exact_and_closed_form():
    """For u = (a + b t) z the flow is z_t = z_0 exp(a t + b t²/2), so
    log p_1(x) = log N(x e^{−(a + b/2)}; 0, I) − Σ (a + b/2) — the exact and Hutchinson likelihoods must agree."""
    with jax.enable_x64(True):
        d = 4
        params = {"a": jnp.linspace(-0.5, 0.5, d), "b": jnp.linspace(0.3, -0.2, d)}
        path = fj.paths.AffinePath(fj.paths.CondOT())
        x = jax.random.normal(jax.random.key(0), (6, d), jnp.float64)
        k = params["a"] + params["b"] / 2
        z0 = x * jnp.exp(-k)
        closed = -0.5 * jnp.sum(z0**2, -1) - 0.5 * d * math.log(2 * math.pi) - jnp.sum(k)
        hutch, _ = S.log_likelihood(path, _diagonal_model, params, x, divergence=S.Hutchinson(1),
                                    key=jax.random.key(1), rtol=1e-9, atol=1e-9)
        exact, _ = S.log_likelihood(path, _diagonal_model, params, x, divergence=S.Exact(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(exact, closed, rtol=1e-7)  # adaptive Tsit5 at 1e-9
        np.testing.assert_allclose(hutch, exact, rtol=1e-9)  # same solve, exact divergence for diagonal Jacobians
        bpd, _ = M.model_bits_per_dim(jax.random.key(1), path, _diagonal_model, params, x, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(bpd, M.bits_per_dim(closed, d), rtol=1e-7)


def test_bits_per_dim_of_uniform_is_log2_levels():
    d = 784
    # Uniform on [−1, 1]^d has log p = −d log 2: 8 bits for 256 levels, log2(17) for 17.
    np.testing.assert_allclose(M.bits_per_dim(jnp.asarray(-d * math.log(2.0)), d, 256), 8.0, rtol=1e-6)
    np.testing.assert_allclose(M.bits_per_dim(jnp.asarray(-d * math.log(2.0)), d, 17), math.log2(17), rtol=1e-6)


def test_dequantised_bits_per_dim_of_a_gaussian_bounds_the_discrete_answer():
    # Known answer: x = 2(k + u)/L − 1 under p_x = N(0, s²) per dimension. The single-draw estimate averages to
    # E_u[−log p_x(x)] = Σ_d [(c_d² + h²/12) / (2 s²) + log(s √(2π))] (c_d the bin centre, h = 2/L the bin width),
    # which bounds −log₂ P(k) with P(k) = Π_d [Φ((c_d + h/2)/s) − Φ((c_d − h/2)/s)] from above, by ≤ Σ (c/s²)² h²/24.
    from scipy.stats import norm

    from fm_jax.data.images import dequantize

    levels, s, d, n = 256, 0.5, 16, 20_000
    rng = np.random.default_rng(0)
    k = rng.integers(0, levels, (d,), dtype=np.uint8)
    u = rng.random((n, d), dtype=np.float32)
    x = np.asarray(dequantize(np.broadcast_to(k, (n, d)), u, levels), np.float64)
    log_p = np.sum(norm.logpdf(x, scale=s), axis=-1)
    bpd = np.asarray(M.bits_per_dim(jnp.asarray(log_p), d, levels), np.float64)
    h = 2.0 / levels
    c = 2.0 * (k + 0.5) / levels - 1.0
    expected_neg_log_p = np.sum((c**2 + h**2 / 12) / (2 * s**2) + math.log(s * math.sqrt(2 * math.pi)))
    bound = (expected_neg_log_p - d * math.log(h)) / (d * math.log(2.0))
    np.testing.assert_allclose(bpd.mean(), bound, atol=5 * bpd.std() / math.sqrt(n))  # 5 standard errors
    exact = -np.sum(np.log2(norm.cdf((c + h / 2) / s) - norm.cdf((c - h / 2) / s))) / d
    gap = bound - exact
    assert 0.0 <= gap <= np.sum((c / s**2) ** 2 * h**2 / 24) / (d * math.log(2.0)) * 1.01 + 1e-12, gap
