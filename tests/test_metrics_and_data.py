"""Metrics against closed forms and references; toy generators' shapes, determinism and jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from fm_jax import metrics as M
from fm_jax.data import toy


def test_w2_between_shifted_samples_is_the_shift():
    x = np.random.default_rng(0).normal(size=(300, 2))
    np.testing.assert_allclose(M.wasserstein2(x, x + np.array([3.0, 4.0])), 5.0, rtol=1e-9)
    assert M.wasserstein2(x, x) == pytest.approx(0.0, abs=1e-6)  # sqrt of round-off
    with pytest.raises(ValueError, match="dimension"):
        M.wasserstein2(x, np.ones((10, 3)))


def test_w2_one_dimensional_matches_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=400), rng.normal(1.0, 2.0, size=400)
    # In 1-D with equal sizes the optimal coupling sorts both samples.
    ref = np.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))
    np.testing.assert_allclose(M.wasserstein2(x[:, None], y[:, None]), ref, rtol=1e-9)
    assert scipy.stats.wasserstein_distance(x, y) <= ref + 1e-12  # W1 ≤ W2


def test_mmd_and_energy_distance_separate_laws():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    a, b = jax.random.normal(k1, (800, 2)), jax.random.normal(k2, (800, 2))
    c = jax.random.normal(k3, (800, 2)) + 1.0
    assert abs(float(M.mmd(a, b))) < 0.01 < float(M.mmd(a, c))
    assert float(M.energy_distance(a, b)) < 0.02 < float(M.energy_distance(a, c))
    # Energy distance of two point masses at distance r is 2r.
    far = jnp.tile(jnp.array([3.0, 4.0]), (5, 1))
    np.testing.assert_allclose(M.energy_distance(jnp.zeros((5, 2)), far), 10.0, rtol=1e-5)


def test_paired_l2_and_mixture_log_likelihood():
    x = jnp.zeros((4, 2))
    np.testing.assert_allclose(M.paired_l2(x, x + jnp.array([3.0, 4.0])), 5.0)
    with pytest.raises(ValueError, match="equal shapes"):
        M.paired_l2(x, jnp.zeros((3, 2)))
    pts = jax.random.normal(jax.random.key(1), (50, 2))
    means, stds, weights = toy.eight_gaussians_mixture()
    ref = scipy.special.logsumexp(
        np.stack([scipy.stats.multivariate_normal.logpdf(pts, m, s**2 * np.eye(2)) for m, s in zip(means, stds)]),
        axis=0, b=np.asarray(weights)[:, None])
    np.testing.assert_allclose(M.mixture_log_likelihood(pts, means, stds, weights), ref.mean(), rtol=1e-5)


def test_kinetic_energy_and_straightness_of_known_trajectories():
    ts = jnp.linspace(0, 1, 101)
    x0, x1 = jnp.zeros((3, 2)), jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    straight = x0[None] + ts[:, None, None] * (x1 - x0)[None]
    np.testing.assert_allclose(M.kinetic_energy(straight, ts), np.mean([1.0, 4.0, 25.0]), rtol=1e-5)
    np.testing.assert_allclose(M.straightness(straight, ts), 0.0, atol=1e-6)
    circle = jnp.stack([jnp.cos(2 * jnp.pi * ts), jnp.sin(2 * jnp.pi * ts)], -1)[:, None, :]
    # A full circle at unit radius: speed 2π, chord 0 → straightness error = ∫ |v|² = 4π².
    np.testing.assert_allclose(M.straightness(circle, ts), 4 * np.pi**2, rtol=2e-3)


@pytest.mark.parametrize("name", ["half_moons", "eight_gaussians", "checkerboard", "two_spirals", "circles",
                                  "gaussian_grid"])
def test_toy_generators(name):
    gen = getattr(toy, name)
    a = jax.jit(gen, static_argnums=1)(jax.random.key(0), 512)
    assert a.shape == (512, 2) and bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_allclose(a, gen(jax.random.key(0), 512), rtol=1e-5, atol=1e-5)  # jit may fuse and reassociate
    assert not np.allclose(a, gen(jax.random.key(1), 512))
    assert float(jnp.abs(a).max()) < 5.0


def test_checkerboard_only_fills_dark_squares_and_grid_std_is_a_parameter():
    x = np.asarray(toy.checkerboard(jax.random.key(0), 5000))
    cells = np.floor((x + 2.0) / 1.0).astype(int)
    assert np.all((cells.sum(-1) % 2) == 0)
    g = np.asarray(toy.gaussian_grid(jax.random.key(1), 9000, std=1e-4))
    means = np.asarray(toy.gaussian_grid_mixture(1e-4)[0])
    d = np.min(np.linalg.norm(g[:, None] - means[None], axis=-1), axis=1)
    assert d.max() < 1e-3


def test_wasserstein2_1d_exact_against_pot_unequal_sizes():
    """The merged-quantile sum is the exact 1-D W2², also for n ≠ m (POT's exact solver as reference), in f64."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=37), rng.normal(0.5, 2.0, size=53)
    ref = M.wasserstein2(a[:, None], b[:, None]) ** 2
    with jax.enable_x64(True):
        got = float(M.wasserstein2_1d(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    np.testing.assert_allclose(float(jax.jit(M.wasserstein2_1d)(jnp.asarray(a), jnp.asarray(b))), ref, rtol=1e-5)


def test_sliced_w2_closed_form_and_floor():
    """Gaussian shift: every projection of N(0, I) vs N(μ, I) differs by θ·μ, so SW2² = E(θ·μ)² = |μ|²/d exactly
    in expectation; and two draws of one law give a small floor that shrinks with n (no curse of dimension)."""
    k = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(k[0], (4000, 2))
    mu = jnp.array([3.0, 4.0])
    sw = float(M.sliced_wasserstein2(k[1], x, x + mu, num_projections=4096))
    # Monte Carlo over θ: (θ·μ)² = 25 cos²φ has std 25/√8 ≈ 8.8; with 4096 draws the SW2² s.e. is ~0.14 (of 12.5).
    np.testing.assert_allclose(sw**2, 12.5, atol=5 * 0.14)
    floor_small = float(M.sliced_wasserstein2(k[2], x[:500], jax.random.normal(k[3], (500, 2))))
    floor_big = float(M.sliced_wasserstein2(k[2], x, jax.random.normal(k[4], (4000, 2))))
    assert floor_big < floor_small < 0.2, (floor_small, floor_big)
    assert floor_big < M.wasserstein2(np.asarray(x[:1000]), np.asarray(jax.random.normal(k[4], (1000, 2))))
    with pytest.raises(ValueError, match="dimension"):
        M.sliced_wasserstein2(k[0], x, jnp.ones((10, 3)))
