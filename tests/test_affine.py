"""Numerical tests of the affine Gaussian paths against analytic answers."""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fm_jax import paths as P
from fm_jax.sampling import integrate

# Factories: built inside each test so float64 tests get float64 hyper-parameters.
SCHEDULES = {
    "cond_ot": lambda: P.CondOT(),
    "cond_ot_smin": lambda: P.CondOT(0.05),
    "vp": lambda: P.VP(),
    "ve": lambda: P.VE(0.01, 5.0),
    "cosine": lambda: P.Cosine(),
    "poly3": lambda: P.Polynomial(3.0),
    "linear_vp": lambda: P.LinearVP(),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_closed_form_derivatives_match_jvp(name):
    with jax.enable_x64(True):
        sch = SCHEDULES[name]()
        for t in np.linspace(0.01, 0.99, 7):
            t = jnp.asarray(t)
            da = jax.jvp(sch.alpha, (t,), (jnp.ones_like(t),))[1]
            ds = jax.jvp(sch.sigma, (t,), (jnp.ones_like(t),))[1]
            np.testing.assert_allclose(sch.d_alpha(t), da, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(sch.d_sigma(t), ds, rtol=1e-12, atol=1e-12)
            # ... and both match a central finite difference (guards against a wrong closed form AND wrong alpha).
            h = 1e-6
            np.testing.assert_allclose(da, (sch.alpha(t + h) - sch.alpha(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_boundary_values():
    for sch in (P.CondOT(), P.Cosine(), P.Polynomial(2.0)):
        np.testing.assert_allclose([sch.alpha(0.0), sch.sigma(0.0), sch.alpha(1.0), sch.sigma(1.0)], [0, 1, 1, 0],
                                   atol=1e-7)
    vp = P.VP()
    np.testing.assert_allclose(vp.alpha(0.0), math.exp(-(20.0 + 0.1) / 4 + 1e-5), rtol=1e-4)
    np.testing.assert_allclose(vp.alpha(1.0) ** 2 + vp.sigma(1.0) ** 2, 1.0, rtol=1e-6)
    assert float(vp.sigma(1.0)) < 2e-3 and math.isfinite(float(vp.d_sigma(1.0)))
    ve = P.VE(0.01, 5.0)
    np.testing.assert_allclose([ve.sigma(0.0), ve.sigma(1.0)], [5.0, 0.01], rtol=1e-6)


def test_cond_ot_sigma_min_and_reduction_polynomial_n1():
    t = jnp.linspace(0, 1, 11)
    np.testing.assert_allclose(P.Polynomial(1.0).alpha(t), P.CondOT().alpha(t), atol=1e-7)
    np.testing.assert_allclose(P.Polynomial(1.0).sigma(t), P.CondOT().sigma(t), atol=1e-7)
    np.testing.assert_allclose(P.CondOT(0.1).sigma(1.0), 0.1, atol=1e-7)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_snr_inverse(name):
    with jax.enable_x64(True):
        sch = SCHEDULES[name]()
        t = jnp.linspace(0.05, 0.95, 10)
        np.testing.assert_allclose(jax.vmap(sch.snr_inverse)(jax.vmap(sch.snr)(t)), t, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    t=st.floats(0.05, 0.95),
    u=st.lists(st.floats(-3, 3), min_size=3, max_size=3),
    x=st.lists(st.floats(-3, 3), min_size=3, max_size=3),
    name=st.sampled_from(["cond_ot", "vp", "cosine", "poly3"]),
)
def test_prediction_conversions_round_trip(t, u, x, name):
    with jax.enable_x64(True):
        path = P.AffinePath(SCHEDULES[name]())
        t, u, x = jnp.asarray(t), jnp.asarray(u), jnp.asarray(x)
        x1 = path.velocity_to_x1(u, x, t)
        eps = path.velocity_to_noise(u, x, t)
        # The three predictions describe one decomposition x = alpha x1 + sigma eps, u = alpha' x1 + sigma' eps.
        a, s = path.schedule.alpha(t), path.schedule.sigma(t)
        np.testing.assert_allclose(a * x1 + s * eps, x, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(path.x1_to_velocity(x1, x, t), u, rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(path.noise_to_velocity(eps, x, t), u, rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(path.x1_to_noise(x1, x, t), eps, rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(path.noise_to_x1(eps, x, t), x1, rtol=1e-7, atol=1e-7)


def test_noise_to_score_matches_gaussian_score():
    # Data N(0, I): x_t ~ N(0, (alpha^2 + sigma^2) I), E[eps|x] = sigma x / (alpha^2 + sigma^2).
    path = P.AffinePath(P.CondOT())
    t, x = 0.3, jnp.array([0.5, -1.0])
    a, s = 0.3, 0.7
    eps = s * x / (a**2 + s**2)
    np.testing.assert_allclose(path.noise_to_score(eps, x, t), -x / (a**2 + s**2), rtol=1e-6)


def test_gaussian_marginal_velocity_is_zero_for_variance_preserving_paths_on_standard_normal_data():
    # papers.md §7 item 2: N(0, I) data and alpha^2 + sigma^2 = 1 give u = 0.
    x = jnp.array([0.3, -1.2])
    for t in (0.1, 0.5, 0.9):
        u = P.gaussian_marginal_velocity(P.Cosine(), jnp.zeros(2), jnp.eye(2), x, t)
        np.testing.assert_allclose(u, 0.0, atol=1e-6)


def test_gaussian_marginal_velocity_matches_monte_carlo_posterior_mean():
    # E[u_t(x|x1) | x_t ∈ small ball around x] estimated by Monte Carlo vs the closed form.
    key = jax.random.key(0)
    mean, cov = jnp.array([1.0, -0.5]), jnp.array([[0.5, 0.2], [0.2, 0.3]])
    sch, t, x = P.CondOT(), 0.6, jnp.array([0.5, -0.2])
    n = 400_000
    k1, k2 = jax.random.split(key)
    x1 = jax.random.multivariate_normal(k1, mean, cov, (n,))
    x0 = jax.random.normal(k2, (n, 2))
    xt = t * x1 + (1 - t) * x0
    ut = x1 - x0
    # Linear regression of u on x_t is exact for jointly Gaussian (x_t, u): E[u|x] = mu_u + B (x - mu_x).
    xc, uc = xt - xt.mean(0), ut - ut.mean(0)
    B = jnp.linalg.solve(xc.T @ xc, xc.T @ uc).T
    mc = ut.mean(0) + B @ (x - xt.mean(0))
    exact = P.gaussian_marginal_velocity(sch, mean, cov, x, t)
    np.testing.assert_allclose(mc, exact, atol=0.01)  # regression error ~ 1/sqrt(n) ≈ 2e-3 per coefficient


def _gaussian_flow(sch, mean, cov):
    return lambda t, x: jax.vmap(lambda xi: P.gaussian_marginal_velocity(sch, mean, cov, xi, t))(x)


def test_integrating_exact_cond_ot_velocity_reproduces_gaussian_data():
    with jax.enable_x64(True):
        mean, cov = jnp.array([1.0, -2.0]), jnp.array([[0.6, 0.25], [0.25, 0.4]])
        z0 = jax.random.normal(jax.random.key(1), (20_000, 2), jnp.float64)
        x1, nfe, _, _ = integrate(_gaussian_flow(P.CondOT(), mean, cov), z0, solver=diffrax.Tsit5(), num_steps=None,
                                  rtol=1e-8, atol=1e-8)
        n = z0.shape[0]
        np.testing.assert_allclose(x1.mean(0), mean, atol=5 * np.sqrt(0.6 / n))
        np.testing.assert_allclose(np.cov(np.asarray(x1).T), cov, atol=6 * 0.6 * np.sqrt(2 / n))
        assert int(nfe) > 1


def test_euler_converges_with_order_one_and_tsit5_agrees_with_fine_euler():
    with jax.enable_x64(True):
        mean, cov = jnp.array([1.0, -2.0]), jnp.array([[0.6, 0.25], [0.25, 0.4]])
        f = _gaussian_flow(P.CondOT(), mean, cov)
        z0 = jax.random.normal(jax.random.key(2), (64, 2), jnp.float64)
        ref, _, _, _ = integrate(f, z0, solver=diffrax.Tsit5(), num_steps=None, rtol=1e-11, atol=1e-11)
        steps = [10, 20, 40, 80]
        errs = [float(jnp.max(jnp.abs(integrate(f, z0, solver=diffrax.Euler(), num_steps=n)[0] - ref))) for n in steps]
        orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
        np.testing.assert_allclose(orders, 1.0, atol=0.15)
        fine, _, _, _ = integrate(f, z0, solver=diffrax.Euler(), num_steps=4000)
        np.testing.assert_allclose(fine, ref, atol=2e-3)
        heun = [float(jnp.max(jnp.abs(integrate(f, z0, solver=diffrax.Heun(), num_steps=n)[0] - ref))) for n in steps]
        np.testing.assert_allclose(np.log2(np.array(heun[:-1]) / np.array(heun[1:])), 2.0, atol=0.2)


def _ko():
    from fm_jax.kinetic import ko_schedule

    # A separation function other than 1 (lam = 1 gives Cond-OT): no closed-form snr inverse, so bisection + IFT.
    return ko_schedule(lambda s: (0.5 + s**2) / (1.0 + s**2), num_grid=1025)


# Every schedule, for the trained x target matrix (VE at a moderate sigma_max so its snr range overlaps the others).
TRANSFORM_SCHEDULES = {
    "cond_ot": lambda: P.CondOT(),
    "cond_ot_smin": lambda: P.CondOT(0.05),
    "vp": lambda: P.VP(),
    "ve": lambda: P.VE(0.01, 5.0),
    "cosine": lambda: P.Cosine(),
    "poly2": lambda: P.Polynomial(2.0),
    "linear_vp": lambda: P.LinearVP(),
    "kinetic_optimal": _ko,
}
_MEAN, _COV = jnp.array([1.0, -0.5]), jnp.array([[0.5, 0.15], [0.15, 0.3]])


def test_schedule_transform_issue_example_cosine_to_cond_ot():
    # Exact Gaussian velocity at x = (0.3, -0.7), r = 0.4, trained on Cosine, sampled along Cond-OT: (0.991, 0.074)
    # (the zero-derivative bisection gave (-0.5, 1.167)).
    with jax.enable_x64(True):
        v = lambda x, t: P.gaussian_marginal_velocity(P.Cosine(), _MEAN, _COV, x, t)  # noqa: E731
        out = jax.jit(P.schedule_transform(v, P.Cosine(), P.CondOT()))(jnp.array([0.3, -0.7]), jnp.asarray(0.4))
        np.testing.assert_allclose(out, [0.99141631, 0.07403433], rtol=1e-7)
    # float32: every schedule's closed-form inverse and the bisection's implicit derivative, to single precision.
    mean, cov = _MEAN.astype(jnp.float32), _COV.astype(jnp.float32)
    for trained in ("cosine", "vp", "poly2", "linear_vp", "kinetic_optimal"):
        tr = TRANSFORM_SCHEDULES[trained]()
        v = lambda x, t, tr=tr: P.gaussian_marginal_velocity(tr, mean, cov, x, t)  # noqa: E731
        out = jax.jit(P.schedule_transform(v, tr, P.CondOT()))(jnp.array([0.3, -0.7]), jnp.asarray(0.4))
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, [0.99141631, 0.07403433], rtol=2e-4, err_msg=trained)


def _check_transform_pairs(pairs):
    """For each (trained, target) name pair: a velocity exact for `trained`, transformed to `target`, is the exact
    velocity of the target, at three times, all pairs in one compiled function."""
    with jax.enable_x64(True):
        built = {n: TRANSFORM_SCHEDULES[n]() for n in {n for pair in pairs for n in pair}}
        rs = jnp.array([0.3, 0.5, 0.7])
        x = jnp.array([0.3, -0.7])

        @jax.jit
        def matrix(x, rs):
            out, exact, inside = [], [], []
            for trained, target in pairs:
                tr, tg = built[trained], built[target]
                v = lambda z, t, tr=tr: P.gaussian_marginal_velocity(tr, _MEAN, _COV, z, t)  # noqa: E731
                fn = P.schedule_transform(v, tr, tg)
                out.append(jax.vmap(lambda r, fn=fn: fn(x, r))(rs))
                exact.append(jax.vmap(lambda r, tg=tg: P.gaussian_marginal_velocity(tg, _MEAN, _COV, x, r))(rs))
                snr = jax.vmap(tg.snr)(rs)
                inside.append((snr > tr.snr(1e-3)) & (snr < tr.snr(1.0 - 1e-3)))
            return jnp.stack(out), jnp.stack(exact), jnp.stack(inside)

        out, exact, inside = (np.asarray(a) for a in matrix(x, rs))
        # The transform exists where the target's snr lies inside the trained schedule's snr range; every pair has
        # at least one such time here.
        assert inside.any(axis=-1).all(), [pairs[i] for i in np.flatnonzero(~inside.any(axis=-1))]
        for i, k in np.argwhere(inside):
            np.testing.assert_allclose(out[i, k], exact[i, k], rtol=1e-6, atol=1e-8,
                                       err_msg=f"{pairs[i][0]} -> {pairs[i][1]} at r={float(rs[k])}")


def test_schedule_transform_maps_exact_velocity_to_and_from_cond_ot():
    # Every schedule as the trained one (its snr_inverse differentiated) and as the target; the full matrix below.
    names = list(TRANSFORM_SCHEDULES)
    _check_transform_pairs([(n, "cond_ot") for n in names] + [("cond_ot", n) for n in names[1:]])


@pytest.mark.slow
def test_schedule_transform_maps_exact_velocity_for_every_pair():
    # All 64 trained x target pairs (about a minute to compile on two cores).
    names = list(TRANSFORM_SCHEDULES)
    _check_transform_pairs([(a, b) for a in names for b in names])


@pytest.mark.parametrize("name", list(TRANSFORM_SCHEDULES))
def test_snr_inverse_derivative_matches_finite_differences(name):
    """d/dr snr_inverse(snr_target(r)) (the time map of schedule_transform) by jvp vs central differences, for the
    schedule's own inverse and for the generic bisection with its implicit-function derivative."""
    with jax.enable_x64(True):
        sch = TRANSFORM_SCHEDULES[name]()
        target = P.Cosine()
        rs, h = jnp.array([0.3, 0.5, 0.7]), 1e-5

        @jax.jit
        def jvp_and_fd(rs):
            res = []
            for inverse in (sch.snr_inverse, lambda s: P.AbstractSchedule.snr_inverse(sch, s)):
                time_map = lambda r, inverse=inverse: inverse(target.snr(r))  # noqa: E731
                jvp = jax.vmap(lambda r, tm=time_map: jax.jvp(tm, (r,), (jnp.ones_like(r),))[1])(rs)
                fd = (jax.vmap(time_map)(rs + h) - jax.vmap(time_map)(rs - h)) / (2 * h)
                res.append((jvp, fd))
            return res

        for jvp, fd in jvp_and_fd(rs):
            # KO: piecewise-linear table, so a central difference is exact only to O(grid step) near a kink.
            tol = 2e-3 if name == "kinetic_optimal" else 1e-6
            np.testing.assert_allclose(jvp, fd, rtol=tol, err_msg=name)
            assert np.all(np.asarray(jvp) > 0)


def test_bisection_inverse_differentiates_in_the_hyper_parameters():
    """The implicit-function jvp also carries d/d(theta): grad of the generic inverse in Polynomial's n and VP's
    beta_max equals that of the closed form."""
    with jax.enable_x64(True):
        snr = jnp.asarray(0.8)
        for build, field in ((P.Polynomial, "n"), (lambda v: P.VP(beta_max=v), "beta_max")):
            generic = jax.jit(jax.grad(lambda v: P.AbstractSchedule.snr_inverse(build(v), snr)))(jnp.asarray(3.0))
            closed = jax.jit(jax.grad(lambda v: build(v).snr_inverse(snr)))(jnp.asarray(3.0))
            assert abs(float(closed)) > 1e-3, field
            np.testing.assert_allclose(generic, closed, rtol=1e-8, err_msg=field)


def test_linear_vp_matches_its_definition():
    with jax.enable_x64(True):
        sch = P.LinearVP()
        t = jnp.linspace(0.0, 0.9, 7)
        np.testing.assert_allclose(sch.alpha(t), t, atol=0)
        np.testing.assert_allclose(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, 1.0, rtol=1e-14)
        np.testing.assert_allclose([sch.sigma(0.0), sch.sigma(1.0)], [1.0, 0.0], atol=0)


def test_bad_schedule_parameters_are_rejected():
    with pytest.raises(ValueError, match="beta_min"):
        P.VP(beta_min=-1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        P.VE(0.01, 0.0)
    with pytest.raises(ValueError, match="sigma_max > sigma_min"):
        P.VE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        P.CondOT(1.5)
    with pytest.raises(ValueError, match="Polynomial n"):
        P.Polynomial(0.0)
