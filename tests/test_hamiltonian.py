"""Hamiltonian generative flows: closed forms, conversions, symplectic integration, HMC invariance (papers.md §7
items 13-16), and the equivalence of the zero-force HGFs with affine paths."""

from __future__ import annotations

import functools
import math

import diffrax
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from fm_jax import hamiltonian as H
from fm_jax import paths as P


def x64():
    return jax.enable_x64(True)


# ------------------------------------------------------------------------------------------------------------
# §7 item 13-14: the oscillation closed form
# ------------------------------------------------------------------------------------------------------------


@jax.jit
def _oscillation_derivatives(x0, v0, tau, alpha):
    pos = lambda s: H.oscillation_state(x0, v0, s, alpha)[0]  # noqa: E731
    x, v = H.oscillation_state(x0, v0, tau, alpha)
    dx = jax.jvp(pos, (tau,), (jnp.ones_like(tau),))[1]
    ddx = jax.jvp(lambda s: jax.jvp(pos, (s,), (jnp.ones_like(s),))[1], (tau,), (jnp.ones_like(tau),))[1]
    return x, v, dx, ddx


@settings(max_examples=30, deadline=None)
@given(
    alpha=st.floats(0.0, 5.0, allow_subnormal=False),
    tau=st.floats(-3.0, 3.0, allow_subnormal=False),
    x0=st.lists(st.floats(-3, 3, allow_subnormal=False), min_size=3, max_size=3),
    v0=st.lists(st.floats(-3, 3, allow_subnormal=False), min_size=3, max_size=3),
)
def test_oscillation_solves_harmonic_ode_and_conserves_energy(alpha, tau, x0, v0):
    with x64():
        x0, v0 = jnp.array(x0), jnp.array(v0)
        x, v, dx, ddx = _oscillation_derivatives(x0, v0, jnp.asarray(tau), jnp.asarray(alpha))
        np.testing.assert_allclose(dx, v, atol=1e-12)  # v is dx/dtau (float64 autodiff: exact to rounding)
        np.testing.assert_allclose(ddx, -(alpha**2) * x, atol=1e-10)  # x'' = -alpha^2 x
        e0 = alpha**2 * jnp.sum(x0**2) + jnp.sum(v0**2)
        e = alpha**2 * jnp.sum(x**2) + jnp.sum(v**2)
        np.testing.assert_allclose(e, e0, rtol=1e-12, atol=1e-12)
        x_start, v_start = H.oscillation_state(x0, v0, 0.0, alpha)
        np.testing.assert_allclose(x_start, x0, atol=0)
        np.testing.assert_allclose(v_start, v0, atol=0)


def test_oscillation_quarter_period_and_zero_force_limit():
    with x64():
        x0, v0 = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.3, 0.7, -1.1])
        for alpha in [0.5, 1.0, 3.0]:
            x, v = H.oscillation_state(x0, v0, math.pi / (2 * alpha), alpha)
            np.testing.assert_allclose(x, v0 / alpha, atol=1e-14)  # x_T = v0 / alpha (pure noise)
            np.testing.assert_allclose(v, -alpha * x0, atol=1e-14)
        tau = 0.8
        x, v = H.oscillation_state(x0, v0, tau, 0.0)
        np.testing.assert_allclose(x, x0 + tau * v0, atol=1e-15)  # alpha = 0 is the zero-force flow exactly
        np.testing.assert_allclose(v, v0, atol=0)
        x, v = H.oscillation_state(x0, v0, tau, 1e-4)
        # the deviation is alpha^2 tau^2 |x0|/2 + alpha^2 tau^3 |v0| / 6 ~ 1e-8
        np.testing.assert_allclose(x, x0 + tau * v0, atol=2e-8)
        np.testing.assert_allclose(v, v0, atol=2e-8)


# ------------------------------------------------------------------------------------------------------------
# §7 item 15: velocity-predictor identities against exact Gaussian posteriors
# ------------------------------------------------------------------------------------------------------------


def _gaussian_posteriors(m, C, c, S, sigma_v, x):
    """For x = c x0 + S v0 with x0 ~ N(m, C), v0 ~ N(0, sigma_v^2 I): E[x0|x], E[v0|x], grad log p(x)."""
    d = m.shape[0]
    sig = c**2 * C + (S * sigma_v) ** 2 * jnp.eye(d)
    w = jnp.linalg.solve(sig, x - c * m)
    return m + c * C @ w, S * sigma_v**2 * w, -w


@pytest.mark.parametrize("alpha,sigma_v,tau", [(1.0, 1.0, 0.4), (2.0, 0.7, 0.6), (0.5, 1.5, 2.9)])
def test_oscillation_conversions_match_exact_gaussian_posteriors(alpha, sigma_v, tau):
    with x64():
        m = jnp.array([0.5, -1.0])
        A = jnp.array([[1.0, 0.3], [-0.2, 0.6]])
        C = A @ A.T
        x = jnp.array([0.7, 0.2])
        c, s = math.cos(alpha * tau), math.sin(alpha * tau)
        D, Ev0, score = _gaussian_posteriors(m, C, c, s / alpha, sigma_v, x)
        phi = -alpha * s * D + c * Ev0  # E[v_tau | x] = -alpha s E[x0|x] + c E[v0|x]
        np.testing.assert_allclose(H.oscillation_denoiser_to_velocity(D, x, tau, alpha), phi, rtol=1e-12)
        np.testing.assert_allclose(H.oscillation_velocity_to_denoiser(phi, x, tau, alpha), D, rtol=1e-12)
        np.testing.assert_allclose(H.oscillation_velocity_to_score(phi, x, tau, alpha, sigma_v), score, rtol=1e-10)
        np.testing.assert_allclose(H.oscillation_score_to_velocity(score, x, tau, alpha, sigma_v), phi, rtol=1e-10)
        np.testing.assert_allclose(H.oscillation_denoiser_to_score(D, x, tau, alpha, sigma_v), score, rtol=1e-10)


@pytest.mark.parametrize("sigma_v,tau", [(1.0, 0.3), (2.0, 1.7)])
def test_zero_force_conversions_match_exact_gaussian_posteriors(sigma_v, tau):
    with x64():
        m = jnp.array([0.5, -1.0])
        C = jnp.array([[1.0, 0.2], [0.2, 0.5]])
        x = jnp.array([-0.3, 0.9])
        D, Ev0, score = _gaussian_posteriors(m, C, 1.0, tau, sigma_v, x)
        phi = Ev0  # zero force: v_tau = v0
        np.testing.assert_allclose(H.zero_force_denoiser_to_velocity(D, x, tau), phi, rtol=1e-12)
        np.testing.assert_allclose(H.zero_force_velocity_to_denoiser(phi, x, tau), D, rtol=1e-12)
        np.testing.assert_allclose(H.zero_force_velocity_to_score(phi, x, tau, sigma_v), score, rtol=1e-12)
        np.testing.assert_allclose(H.zero_force_score_to_velocity(score, x, tau, sigma_v), phi, rtol=1e-12)


def test_oscillation_path_conversions_in_our_time():
    # The path's velocity in t is -T phi; its conversions must agree with the exact Gaussian posterior.
    with x64():
        path = P.OscillationHGFPath(alpha=2.0, sigma_v=0.5)
        m, C = jnp.array([0.3, -0.4]), jnp.array([[0.8, 0.1], [0.1, 0.3]])
        x, t = jnp.array([0.1, 0.25]), 0.35
        tau = float(path.tau(t))
        c, s = math.cos(2.0 * tau), math.sin(2.0 * tau)
        D, Ev0, score = _gaussian_posteriors(m, C, c, s / 2.0, 0.5, x)
        u = -path.tau_max * (-2.0 * s * D + c * Ev0)
        np.testing.assert_allclose(path.velocity_to_denoiser(u, x, t), D, rtol=1e-12)
        np.testing.assert_allclose(path.denoiser_to_velocity(D, x, t), u, rtol=1e-12)
        np.testing.assert_allclose(path.velocity_to_score(u, x, t), score, rtol=1e-10)
        np.testing.assert_allclose(path.score_to_velocity(score, x, t), u, rtol=1e-10)


def test_oscillation_path_marginal_velocity_is_conditional_mean_of_target():
    # Gaussian data N(0, C): E[target | x_t] is linear, so regress targets on states and compare with the path's
    # conversion of the exact denoiser. Tolerance: 6 standard errors of an OLS slope with N = 40000.
    with x64():
        path = P.OscillationHGFPath(alpha=1.5, sigma_v=1.2)
        n, t = 40_000, 0.6
        kx, kp = jax.random.split(jax.random.key(0))
        C = jnp.array([[1.0, 0.4], [0.4, 0.5]])
        x1 = jax.random.normal(kx, (n, 2)) @ jnp.linalg.cholesky(C).T
        zt, target = jax.vmap(path.sample_conditional, in_axes=(0, 0, None))(jax.random.split(kp, n), x1, t)
        coef, res, *_ = np.linalg.lstsq(np.asarray(zt), np.asarray(target), rcond=None)
        tau = float(path.tau(t))
        c, s = math.cos(1.5 * tau), math.sin(1.5 * tau)
        S = s / 1.5
        sig = c**2 * C + (S * 1.2) ** 2 * jnp.eye(2)
        # D(x) = c C sig^{-1} x, so u(x) = -T alpha (c x - D)/s is linear: u = M x
        M = -path.tau_max * 1.5 * (c * jnp.eye(2) - c * C @ jnp.linalg.inv(sig)) / s
        resid_std = np.sqrt(res / n)
        se = resid_std[None, :] / np.sqrt(n * np.diag(np.cov(np.asarray(zt).T)))[:, None]
        np.testing.assert_allclose(coef, np.asarray(M).T, atol=float(6 * se.max()))


# ------------------------------------------------------------------------------------------------------------
# Zero-force HGFs and the oscillation HGF equal affine paths
# ------------------------------------------------------------------------------------------------------------


def _draws(path, keys, x1, t):
    return jax.vmap(path.sample_conditional)(keys, x1, t)


@pytest.mark.parametrize(
    "hgf,affine",
    [
        (lambda: P.ZeroForceHGFPath(0.01, 5.0), lambda: P.AffinePath(P.VE(0.01, 5.0))),
        (lambda: P.ZeroForceHGFPath(0.002, 80.0), lambda: P.AffinePath(P.VE(0.002, 80.0))),
        (lambda: P.CoupledZeroForceHGFPath(), lambda: P.AffinePath(P.CondOT())),
        (lambda: P.OscillationHGFPath(1.0, 1.0), lambda: P.AffinePath(P.Cosine())),
        (lambda: P.OscillationHGFPath(3.0, 3.0), lambda: P.AffinePath(P.Cosine())),
    ],
    ids=["ve", "ve_edm", "cond_ot", "osc_a1", "osc_a3_sv3"],
)
def test_hgf_equals_affine_path(hgf, affine):
    with x64():
        n = 512
        keys = jax.random.split(jax.random.key(1), n)
        x1 = jax.random.normal(jax.random.key(2), (n, 3))
        t = jnp.linspace(0.0, 1.0, n)
        a, b = _draws(hgf(), keys, x1, t), _draws(affine(), keys, x1, t)
        np.testing.assert_allclose(a.z_t, b.z_t, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.target, b.target, rtol=1e-11, atol=1e-11)


def test_oscillation_path_depends_on_alpha_only_through_noise_scale():
    with x64():
        n = 64
        keys = jax.random.split(jax.random.key(3), n)
        x1 = jax.random.normal(jax.random.key(4), (n, 2))
        t = jnp.linspace(0.0, 1.0, n)
        a = _draws(P.OscillationHGFPath(0.5, 0.25), keys, x1, t)
        b = _draws(P.OscillationHGFPath(4.0, 2.0), keys, x1, t)
        np.testing.assert_allclose(a.z_t, b.z_t, atol=1e-12)
        np.testing.assert_allclose(a.target, b.target, atol=1e-11)


def test_path_closed_form_velocities_match_jvp():
    with x64():
        x0, x1 = jnp.array([0.3, -1.2]), jnp.array([1.1, 0.4])
        for path in [P.OscillationHGFPath(2.0, 0.7), P.ZeroForceHGFPath(0.05, 3.0), P.CoupledZeroForceHGFPath(1.3)]:
            for t in [0.0, 0.37, 1.0]:
                np.testing.assert_allclose(
                    path.velocity(x0, x1, t), P.interpolant_velocity(path, x0, x1, t), rtol=1e-12, atol=1e-12
                )


# ------------------------------------------------------------------------------------------------------------
# Symplectic integration
# ------------------------------------------------------------------------------------------------------------


def _pendulum(x, tau):
    del tau
    return -jnp.sin(x)


def test_verlet_second_order_convergence():
    with x64():
        x0, v0 = jnp.array([1.0, -0.4]), jnp.array([0.5, 1.2])
        tau = 2.0
        xe, ve = H.oscillation_state(x0, v0, tau, 1.7)
        ref = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: (y[1], -jnp.sin(y[0]))),
            diffrax.Tsit5(),
            0.0,
            tau,
            0.01,
            (x0, v0),
            stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
            max_steps=100_000,
        ).ys
        cases = [(H.HarmonicForce(1.7), (xe, ve)), (_pendulum, (ref[0][0], ref[1][0]))]
        for force, (x_ref, v_ref) in cases:
            errs = []
            for n in [16, 32, 64, 128]:
                x, v = H.hamiltonian_flow(force, x0, v0, tau, n_steps=n)
                errs.append(float(jnp.sqrt(jnp.sum((x - x_ref) ** 2) + jnp.sum((v - v_ref) ** 2))))
            orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
            assert np.all(np.abs(orders - 2.0) < 0.1), (errs, orders)  # second order: halving h quarters the error


def test_hamiltonian_flow_takes_other_diffrax_solvers():
    # Semi-implicit Euler (diffrax's symplectic first-order solver) through the same driver: first order.
    with x64():
        x0, v0 = jnp.array([1.0, -0.4]), jnp.array([0.5, 1.2])
        xe, ve = H.oscillation_state(x0, v0, 1.0, 1.0)
        errs = []
        for n in [32, 64]:
            x, v = H.hamiltonian_flow(H.HarmonicForce(1.0), x0, v0, 1.0, n_steps=n, solver=diffrax.SemiImplicitEuler())
            errs.append(float(jnp.abs(x - xe).max() + jnp.abs(v - ve).max()))
        assert 1.8 < errs[0] / errs[1] < 2.2, errs  # halving h halves the error


def test_verlet_energy_drift_is_bounded_and_scales_as_h_squared():
    with x64():
        x0, v0 = jnp.array([1.0, -0.4]), jnp.array([0.5, 1.2])
        energy = lambda x, v: jnp.sum(v**2, -1) / 2 - jnp.sum(jnp.cos(x), -1)  # noqa: E731  (pendulum)
        e0 = energy(x0, v0)
        drifts = []
        for h in [0.2, 0.1]:
            n = int(round(400.0 / h))  # 400 time units, ~60 periods
            xs, vs = H.hamiltonian_flow(_pendulum, x0, v0, n * h, n_steps=n, trajectory=True)
            dev = jnp.abs(energy(xs, vs) - e0)
            first, second = float(dev[: n // 2].max()), float(dev[n // 2 :].max())
            # A symplectic scheme has no secular drift: the late error is no larger than the early one (+10 %).
            assert second < 1.1 * first + 1e-12, (first, second)
            drifts.append(float(dev.max()))
        assert 3.0 < drifts[0] / drifts[1] < 5.0, drifts  # bounded oscillation of size O(h^2)


def test_verlet_is_time_reversible_and_differentiable():
    with x64():
        x0, v0 = jnp.array([0.7, -0.1]), jnp.array([-0.2, 0.9])
        x, v = H.hamiltonian_flow(_pendulum, x0, v0, 1.3, n_steps=10)
        xb, vb = H.hamiltonian_flow(_pendulum, x, v, -1.3, n_steps=10)
        np.testing.assert_allclose(xb, x0, atol=1e-13)
        np.testing.assert_allclose(vb, v0, atol=1e-13)
        # reverse-mode in a force parameter and forward-mode in tau, against finite differences (float64)
        f = lambda a: jnp.sum(H.hamiltonian_flow(H.HarmonicForce(a), x0, v0, 1.3, n_steps=10)[0])  # noqa: E731
        g = jax.grad(f)(1.1)
        fd = (f(1.1 + 1e-6) - f(1.1 - 1e-6)) / 2e-6
        np.testing.assert_allclose(g, fd, rtol=1e-7)
        pos = lambda s: H.hamiltonian_flow(_pendulum, x0, v0, s, n_steps=10, adjoint=diffrax.ForwardMode())[0]  # noqa: E731
        _, dx = jax.jvp(pos, (jnp.asarray(1.3),), (jnp.asarray(1.0),))
        fd = (pos(1.3 + 1e-6) - pos(1.3 - 1e-6)) / 2e-6
        np.testing.assert_allclose(dx, fd, rtol=1e-7)


def test_force_field_path_matches_oscillation_path_to_second_order():
    with x64():
        alpha, sigma_v = 1.3, 0.8
        osc = P.OscillationHGFPath(alpha, sigma_v)
        n = 64
        keys = jax.random.split(jax.random.key(5), n)
        x1 = jax.random.normal(jax.random.key(6), (n, 2))
        t = jnp.linspace(0.0, 1.0, n)
        a = _draws(osc, keys, x1, t)
        errs = []
        for steps in [8, 16, 32]:
            ff = P.ForceFieldHGFPath(H.HarmonicForce(alpha), osc.tau_max, sigma_v, sigma_v / alpha, n_steps=steps)
            b = _draws(ff, keys, x1, t)
            errs.append(float(jnp.max(jnp.abs(b.z_t - a.z_t)) + jnp.max(jnp.abs(b.target - a.target))))
        assert errs[-1] < 3e-3, errs  # h = T/32 ~ 0.04: O(h^2) ~ 1e-3
        assert 3.5 < errs[0] / errs[1] < 4.5 and 3.5 < errs[1] / errs[2] < 4.5, errs


def test_force_field_path_accepts_functions_and_nnx_modules_under_jit():
    from flax import nnx

    from fm_jax.models import MLP

    x1, key = jnp.ones((2,)), jax.random.key(0)
    sample = jax.jit(lambda p, k, x, t: p.sample_conditional(k, x, t))
    fn_path = P.ForceFieldHGFPath(lambda x, tau: -x, n_steps=4)
    out = sample(fn_path, key, x1, 0.5)
    assert out.z_t.shape == (2,) and bool(jnp.all(jnp.isfinite(out.target)))
    net = MLP(2, 2, hidden=16, depth=1, rngs=nnx.Rngs(0))
    nnx_path = P.ForceFieldHGFPath(net, n_steps=4)
    assert isinstance(nnx_path.force, P.ApplyForce)
    out = sample(nnx_path, key, x1, 0.5)
    assert out.z_t.shape == (2,) and bool(jnp.all(jnp.isfinite(out.target)))


# ------------------------------------------------------------------------------------------------------------
# §7 item 16: HMC invariance and the Hamiltonian score discrepancy
# ------------------------------------------------------------------------------------------------------------


def test_hmc_invariance_gaussian_true_score_closed_form():
    # pi = N(0, s^2 I), F = -x / s^2: the oscillation flow with alpha = 1/s and sigma_v = 1.
    with x64():
        s, n = 0.7, 50_000
        kx, kv = jax.random.split(jax.random.key(7))
        x0 = s * jax.random.normal(kx, (n, 2))
        v0 = jax.random.normal(kv, (n, 2))
        for tau in [0.3, 1.0, 2.5]:
            x, v = H.oscillation_state(x0, v0, tau, 1.0 / s)
            xs, vs = np.asarray(x).ravel(), np.asarray(v).ravel()
            m = xs.size
            # Var x = s^2 (sd of a sample variance: s^2 sqrt(2/m)), Cov(x, v) = 0 (sd s / sqrt(m)); 5 sd.
            assert abs(xs.var() - s**2) < 5 * s**2 * math.sqrt(2 / m)
            assert abs(np.mean(xs * vs)) < 5 * s / math.sqrt(m)
            # E[v | x] = 0: regress v on (x, x^2 - s^2, x^3); every coefficient within 5 standard errors of 0.
            feats = np.stack([xs, xs**2 - s**2, xs**3], axis=1)
            coef, *_ = np.linalg.lstsq(feats, vs, rcond=None)
            se = np.sqrt(np.diag(np.linalg.inv(feats.T @ feats)))  # residual variance is 1
            assert np.all(np.abs(coef) < 5 * se), (tau, coef, se)


def _gmm():
    means = jnp.array([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]])
    std, weights = 0.5, jnp.array([0.3, 0.5, 0.2])

    def log_density(x):
        logp = -0.5 * jnp.sum((x - means) ** 2, -1) / std**2
        return jax.scipy.special.logsumexp(logp, b=weights)

    def sample(key, n):
        kc, kn = jax.random.split(key)
        comp = jax.random.choice(kc, 3, (n,), p=weights)
        return means[comp] + std * jax.random.normal(kn, (n, 2))

    return log_density, sample


def test_hmc_invariance_mixture_with_true_score_via_importance_sampling():
    # With the true score as force, E[v_tau | x_tau] = 0 (up to the O(h^2) Verlet error); a wrong force gives
    # the linear-in-tau value tau (F - grad log pi) + O(tau^2).
    with x64():
        log_density, _ = _gmm()
        score = jax.grad(log_density)
        xs = jnp.array([[-1.0, 0.3], [0.8, 0.2], [0.1, -1.0]])
        tau, M = 0.4, 4096
        keys = jax.random.split(jax.random.key(8), xs.shape[0])

        @functools.partial(jax.jit, static_argnums=1)
        def posterior(force, n_steps, tau):
            return jax.vmap(
                lambda k, x: H.hamiltonian_velocity_posterior(
                    k, force, log_density, x, tau, n_velocities=M, n_steps=n_steps
                )
            )(keys, xs)

        post = posterior(H.ScoreForce(log_density), 16, tau)
        # sd of a self-normalised IS mean of unit-variance velocities ~ 1/sqrt(M) (weights are near uniform).
        assert float(jnp.max(jnp.abs(post[0]))) < 5 / math.sqrt(M), post
        wrong = H.ScoreForce(log_density, scale=0.5)  # F - grad log pi = -0.5 grad log pi
        post = posterior(wrong, 8, 0.1)
        expected = jax.vmap(lambda x: 0.1 * (-0.5) * score(x))(xs)
        # O(tau^2) remainder: allow 20 % of the leading term plus 5 MC sd.
        np.testing.assert_allclose(post[0], expected, atol=float(0.2 * jnp.abs(expected).max() + 5 / math.sqrt(M)))


def test_importance_sampling_hvp_matches_linear_gaussian_closed_form():
    with x64():
        s2, k, tau = 0.5, 1.0, 0.8  # true score would be k = 2
        log_density = lambda x: -0.5 * jnp.sum(x**2) / s2  # noqa: E731
        force = H.HarmonicForce(math.sqrt(k))
        xs = jnp.array([[0.5, -0.2], [-1.0, 0.8]])
        M = 8192
        post = jax.jit(
            jax.vmap(
                lambda kk, x: H.hamiltonian_velocity_posterior(
                    kk, force, log_density, x, tau, n_velocities=M, n_steps=64
                )
            )
        )(jax.random.split(jax.random.key(9), 2), xs)
        beta, _ = H.linear_force_gaussian_hvp(k, s2, tau)
        np.testing.assert_allclose(post[0], beta * xs, atol=5 / math.sqrt(M) + 1e-3)  # MC + O(h^2)
        np.testing.assert_allclose(post[1], beta * xs, atol=5 / math.sqrt(M) + 1e-3)


def test_linear_gaussian_hsd_small_time_expansion():
    with x64():
        s2, k, dim = 0.5, 1.0, 3
        leading = lambda T: T**3 / 3 * dim * s2 * (k - 1 / s2) ** 2  # noqa: E731  (T^3/3) E||F - grad log pi||^2
        rel = [abs(float(H.linear_force_gaussian_hsd(k, s2, T, dim)) / leading(T) - 1) for T in [0.2, 0.1, 0.05]]
        assert rel[-1] < 0.01 and rel[0] / rel[1] > 1.8 and rel[1] / rel[2] > 1.8, rel  # relative error O(T)
        assert float(H.linear_force_gaussian_hsd(1 / s2, s2, 1.0, dim)) < 1e-20  # true score: HSD = 0


def test_hsd_estimator_matches_closed_form_and_small_time_formula():
    with x64():
        s2, k, T = 0.5, 1.0, 0.6
        x0 = math.sqrt(s2) * jax.random.normal(jax.random.key(10), (512, 2))
        log_density = lambda x: -0.5 * jnp.sum(x**2) / s2  # noqa: E731
        force = H.HarmonicForce(math.sqrt(k))
        est = jax.jit(
            lambda key: H.hamiltonian_score_discrepancy(
                key, force, log_density, x0, T, n_tau=6, n_velocities=512, n_steps=16
            )
        )(jax.random.key(11))
        exact = H.linear_force_gaussian_hsd(k, s2, T, 2)
        # Relative MC error of a mean over 512 points of a chi^2-like quantity ~ sqrt(2/512) ~ 6 %; allow 20 %.
        np.testing.assert_allclose(est, exact, rtol=0.2)
        small = H.hsd_small_time(force, jax.grad(log_density), x0, T)
        assert abs(float(small) / (T**3 / 3 * 2 * s2 * (k - 1 / s2) ** 2) - 1) < 0.2  # sample-mean error


# ------------------------------------------------------------------------------------------------------------
# Reflecting box
# ------------------------------------------------------------------------------------------------------------


def _reflect_reference(x, v, tau, L):
    """Event-driven free flight with elastic walls at +-L (one coordinate, float)."""
    t = 0.0
    while True:
        wall = L if v > 0 else -L
        hit = (wall - x) / v if v != 0 else math.inf
        if t + hit >= tau:
            return x + (tau - t) * v, v
        t, x, v = t + hit, wall, -v


def test_reflecting_box_closed_form_matches_event_driven_flight():
    with x64():
        path = P.ReflectingBoxHGFPath(half_width=1.5, sigma_v=1.0, tau_max=6.0)
        rng = np.random.default_rng(0)
        for _ in range(50):
            x1, v0, tau = rng.uniform(-1.5, 1.5), rng.normal() * 2, rng.uniform(0, 6)
            x, v = path.state(jnp.array([x1]), jnp.array([v0]), tau)
            xr, vr = _reflect_reference(x1, v0, tau, 1.5)
            np.testing.assert_allclose([float(x[0]), float(v[0])], [xr, vr], atol=1e-10)


def test_reflecting_box_source_is_uniform_and_path_ends_at_data():
    path = P.ReflectingBoxHGFPath(half_width=2.0, sigma_v=1.0, tau_max=8.0)
    n = 20_000
    x1 = jax.random.uniform(jax.random.key(12), (n, 2), minval=-0.5, maxval=0.5)
    keys = jax.random.split(jax.random.key(13), n)
    z0 = jax.vmap(path.sample_conditional, in_axes=(0, 0, None))(keys, x1, 0.0).z_t
    zs = np.sort(np.asarray(z0).ravel())
    cdf = (zs + 2.0) / 4.0
    ks = np.max(np.abs(cdf - np.arange(1, zs.size + 1) / zs.size))
    assert ks < 1.63 / math.sqrt(zs.size * 0.5)  # KS 1 % level (coordinates of one point are not independent)
    z1 = jax.vmap(path.sample_conditional, in_axes=(0, 0, None))(keys, x1, 1.0).z_t
    np.testing.assert_allclose(z1, x1, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: P.OscillationHGFPath(alpha=0.0), "alpha"),
        (lambda: P.OscillationHGFPath(alpha=-1.0), "alpha"),
        (lambda: P.OscillationHGFPath(alpha=float("nan")), "alpha"),
        (lambda: P.OscillationHGFPath(sigma_v=0.0), "sigma_v"),
        (lambda: P.OscillationHGFPath(sigma_v=float("inf")), "sigma_v"),
        (lambda: P.CoupledZeroForceHGFPath(sigma_v=-1.0), "sigma_v"),
        (lambda: P.ZeroForceHGFPath(1.0, 0.5), "sigma_max > sigma_min"),
        (lambda: P.ZeroForceHGFPath(0.0, 5.0), "sigma_min"),
        (lambda: P.ForceFieldHGFPath(H.HarmonicForce(1.0), n_steps=0), "n_steps"),
        (lambda: P.ForceFieldHGFPath(H.HarmonicForce(1.0), sigma_v=-2.0), "sigma_v"),
        (lambda: P.ForceFieldHGFPath(3.0), "callable"),
        (lambda: P.ReflectingBoxHGFPath(half_width=0.0), "half_width"),
        (lambda: H.oscillation_state(jnp.ones(2), jnp.ones(2), 1.0, -1.0), "alpha"),
        (lambda: H.HarmonicForce(-2.0), "alpha"),
        (lambda: P.OscillationHGFPath().sample_conditional(jax.random.key(0), jnp.ones(2), 1.5), "t must lie"),
    ],
)
def test_bad_inputs_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
