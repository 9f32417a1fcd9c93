"""Sampler: NFE accounting, time grids, encoding and decoding, likelihoods (exact and Hutchinson) against closed-form
densities, trajectories."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal

from fm_jax import paths as P
from fm_jax.sampling import Exact, Hutchinson, integrate, log_likelihood, sample, sample_from


def _exact_apply(schedule, mean, cov):
    """A 'model' whose prediction is the exact marginal velocity for Gaussian data (batched apply signature)."""

    def apply(params, z, t):
        del params
        return jax.vmap(lambda zi: P.gaussian_marginal_velocity(schedule, mean, cov, zi, t))(z)

    return apply


@pytest.mark.parametrize(
    "solver,num_steps", [(diffrax.Euler(), 7), (diffrax.Heun(), 5), (diffrax.Midpoint(), 4), (diffrax.Ralston(), 3),
                         (diffrax.Bosh3(), 4), (diffrax.Tsit5(), None), (diffrax.Dopri5(), None),
                         (diffrax.Dopri8(), None)]
)
def test_nfe_equals_counted_model_evaluations(solver, num_steps):
    calls = []

    def f(t, z):
        jax.debug.callback(lambda: calls.append(1))
        return -z * (1 + jnp.sin(5 * t))

    z0 = jnp.ones((3, 2))
    _, nfe, _, _ = integrate(f, z0, solver=solver, num_steps=num_steps, rtol=1e-6, atol=1e-6)
    jax.effects_barrier()
    assert int(nfe) == len(calls), (type(solver).__name__, int(nfe), len(calls))
    if num_steps is not None:
        # Stages from the tableaus: Euler 1, Heun/Midpoint/Ralston 2, Bosh3 4 with first-same-as-last (3 + 1 at start).
        expected = {diffrax.Euler: 1 * num_steps, diffrax.Heun: 2 * num_steps, diffrax.Midpoint: 2 * num_steps,
                    diffrax.Ralston: 2 * num_steps, diffrax.Bosh3: 3 * num_steps + 1}[type(solver)]
        assert int(nfe) == expected


def test_any_diffrax_solver_runs_and_nfe_is_none_when_not_countable():
    # Reversible Heun is not a Runge-Kutta tableau: it integrates (exact here: dz/dt = -z) and reports nfe None.
    with jax.enable_x64(True):
        z1, nfe, _, _ = integrate(lambda t, z: -z, jnp.ones(2), solver=diffrax.ReversibleHeun(), num_steps=200)
        assert nfe is None
        np.testing.assert_allclose(z1, np.exp(-1.0), rtol=1e-4)  # second order, h = 1/200


def test_non_uniform_descending_grid_steps_exactly_on_it_and_returns_the_states():
    """Euler on dz/dt = a z over ts = (1, 0.8, 0.35, 0.3, 0): z_{k+1} = z_k (1 + a (t_{k+1} - t_k)) exactly, and the
    adaptive solver saves the exact solution z0 exp(a (t - 1)) at the same grid."""
    with jax.enable_x64(True):
        a, z0 = -0.7, jnp.array([[1.0, -2.0]])
        ts = jnp.array([1.0, 0.8, 0.35, 0.3, 0.0])
        z_end, nfe, traj, ts_out = integrate(lambda t, z: a * z, z0, num_steps=1, ts=ts)
        factors = np.concatenate([[1.0], np.cumprod(1.0 + a * np.diff(np.asarray(ts)))])
        np.testing.assert_allclose(traj, factors[:, None, None] * np.asarray(z0)[None], rtol=1e-13)
        np.testing.assert_allclose(z_end, traj[-1], rtol=0)
        assert int(nfe) == 4 and traj.shape == (5, 1, 2)
        np.testing.assert_allclose(ts_out, ts, rtol=0)
        _, _, traj, _ = integrate(lambda t, z: a * z, z0, solver=diffrax.Tsit5(), num_steps=None, ts=ts, rtol=1e-10,
                                  atol=1e-10)
        exact = np.exp(a * (np.asarray(ts) - 1.0))[:, None, None] * np.asarray(z0)[None]
        np.testing.assert_allclose(traj, exact, rtol=1e-8)


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        integrate(lambda t, z: z, jnp.ones(2), ts=jnp.array([0.0, 0.5, 0.4, 1.0]))
    with pytest.raises(ValueError, match="not both"):
        integrate(lambda t, z: z, jnp.ones(2), ts=jnp.array([0.0, 1.0]), save_trajectory=3)
    with pytest.raises(ValueError, match="at least 2 times"):
        integrate(lambda t, z: z, jnp.ones(2), ts=jnp.array([0.0]))


def test_adaptive_needs_an_adaptive_solver_and_steps_must_be_positive():
    with pytest.raises(ValueError, match="not adaptive"):
        integrate(lambda t, z: z, jnp.ones(2), solver=diffrax.Euler(), num_steps=None)
    with pytest.raises(ValueError, match="positive"):
        integrate(lambda t, z: z, jnp.ones(2), solver=diffrax.Euler(), num_steps=0)


def test_encode_then_decode_returns_the_data_and_the_likelihood_source_is_the_code():
    with jax.enable_x64(True):
        mean = jnp.array([1.0, -0.5])
        cov = jnp.array([[0.5, 0.15], [0.15, 0.3]])
        path = P.AffinePath(P.Cosine())
        apply = _exact_apply(path.schedule, mean, cov)
        x = jax.random.multivariate_normal(jax.random.key(0), mean, cov, (8,))
        kw = dict(solver=diffrax.Tsit5(), num_steps=None, rtol=1e-10, atol=1e-10)
        code = sample_from(path, apply, None, x, t0=1.0, t1=0.0, **kw).state
        # The exact flow maps the data law onto the source N(0, I): codes are not the data, decoding returns it.
        assert float(jnp.max(jnp.abs(code - x))) > 0.1
        np.testing.assert_allclose(sample_from(path, apply, None, code, **kw).samples, x, atol=1e-8)
        res = log_likelihood(path, apply, None, x, return_source=True, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(res.source, code, atol=1e-8)
        np.testing.assert_allclose(res.log_prob, multivariate_normal.logpdf(x, mean, cov), atol=1e-6)


def test_sample_is_sample_from_its_source_draws():
    mean, cov = jnp.array([0.0, 2.0]), jnp.eye(2) * 0.2
    path = P.AffinePath(P.CondOT())
    apply = _exact_apply(path.schedule, mean, cov)
    res = sample(jax.random.key(3), path, apply, None, 16, (2,), num_steps=10)
    z0 = jax.vmap(lambda k: path.sample_source(k, (2,)))(jax.random.split(jax.random.key(3), 16))
    np.testing.assert_allclose(sample_from(path, apply, None, z0, num_steps=10).samples, res.samples, rtol=1e-6)


def _linear_model(params, z, t):
    """u(z, t) = A z with a fixed non-symmetric A: z_t = expm(A t) z_0, div u = tr A (Hutchinson is not exact)."""
    del t
    return z @ params.T


def test_hutchinson_is_unbiased_and_custom_source_log_density():
    """u = A z: z_0 = expm(-A) x and log p_1(x) = log q(z_0) - tr A for any source density q (here a Laplace law).
    Hutchinson over R independent probe draws averages to the exact value within 4 standard errors."""
    with jax.enable_x64(True):
        A = jnp.array([[0.3, 0.9, 0.0], [-0.4, -0.2, 0.5], [0.2, 0.0, 0.1]])
        path = P.AffinePath(P.CondOT())
        x = jax.random.normal(jax.random.key(0), (4, 3))
        laplace = lambda z: -jnp.sum(jnp.abs(z)) - z.size * jnp.log(2.0)  # noqa: E731
        z0 = x @ jax.scipy.linalg.expm(-A).T
        closed = jax.vmap(laplace)(z0) - jnp.trace(A)
        kw = dict(source_log_prob=laplace, solver=diffrax.Heun(), num_steps=64)
        exact, _ = log_likelihood(path, _linear_model, A, x, divergence=Exact(), **kw)
        np.testing.assert_allclose(exact, closed, atol=1e-4)  # Heun, h = 1/64: O(h^2) on the state
        reps = 256
        hutch = jax.vmap(lambda k: log_likelihood(path, _linear_model, A, x, divergence=Hutchinson(1), key=k,
                                                  **kw)[0])(jax.random.split(jax.random.key(1), reps))
        se = np.asarray(hutch.std(0)) / np.sqrt(reps)
        assert np.all(se > 1e-3)  # a real estimator: probes do not cancel for this A
        assert np.all(np.abs(np.asarray(hutch.mean(0) - exact)) < 4 * se), (hutch.mean(0) - exact, se)
        with pytest.raises(ValueError, match="key"):
            log_likelihood(path, _linear_model, A, x, divergence=Hutchinson(2))


def test_exact_log_likelihood_of_gaussian_flow_matches_closed_form_density():
    with jax.enable_x64(True):
        mean = jnp.array([1.0, -0.5])
        cov = jnp.array([[0.5, 0.15], [0.15, 0.3]])
        path = P.AffinePath(P.CondOT())
        apply = _exact_apply(path.schedule, mean, cov)
        x = jax.random.multivariate_normal(jax.random.key(0), mean, cov, (16,))
        lp, nfe = log_likelihood(path, apply, None, x, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(lp, multivariate_normal.logpdf(x, mean, cov), atol=1e-5)
        assert int(nfe) > 0


def test_sample_returns_data_shaped_samples_and_trajectory():
    mean, cov = jnp.array([0.0, 2.0]), jnp.eye(2) * 0.2
    path = P.AffinePath(P.CondOT())
    res = sample(jax.random.key(0), path, _exact_apply(path.schedule, mean, cov), None, 500, (2,),
                 num_steps=50, save_trajectory=11)
    assert res.samples.shape == (500, 2) and int(res.nfe) == 50
    assert res.trajectory.shape == (11, 500, 2) and res.ts.shape == (11,)
    np.testing.assert_allclose(res.trajectory[-1], res.samples, atol=1e-6)
    np.testing.assert_allclose(res.samples.mean(0), mean, atol=0.1)  # 5 standard errors at n = 500, sd 0.45


def test_sampler_and_likelihood_compile_once_across_params_and_hyper_parameters():
    traces = []

    def apply(params, z, t):
        traces.append(1)  # runs once per trace, not per call
        return params * z

    x = jnp.ones((4, 2))
    counts = []
    for scale, sigma_min in ((0.5, 0.0), (0.7, 0.05), (0.9, 0.1)):
        path = P.AffinePath(P.CondOT(sigma_min))
        sample(jax.random.key(0), path, apply, jnp.asarray(scale), 4, (2,), num_steps=3)
        sample_from(path, apply, jnp.asarray(scale), x, t0=1.0, t1=0.0, num_steps=3)
        log_likelihood(path, apply, jnp.asarray(scale), x, solver=diffrax.Euler(), num_steps=3)
        counts.append(len(traces))
    assert counts[0] > 0 and counts[1] == counts[2] == counts[0], counts


# -- EDM's grid and sampler ----------------------------------------------------------------------------------------


def test_edm_sigmas_endpoints_monotone_and_formula():
    from fm_jax.sampling import edm_sigmas

    s = np.asarray(edm_sigmas(18), np.float64)
    assert s.shape == (19,) and s[-1] == 0.0
    np.testing.assert_allclose([s[0], s[-2]], [80.0, 0.002], rtol=1e-5)  # float32 powers of ρ = 7
    assert np.all(np.diff(s) < 0)
    # Karras et al. 2022, Eq. 5 written out in float64 for one interior index.
    i = 5
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s[i], ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(edm_sigmas(1)), [80.0, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        edm_sigmas(0)


@pytest.mark.parametrize("path", [P.AffinePath(P.CondOT()), P.AffinePath(P.VP()), P.OscillationHGFPath(0.5, 2.0)],
                         ids=["cond_ot", "vp", "hgf_osc"])
def test_edm_time_grid_maps_noise_levels_through_the_snr(path):
    from fm_jax.sampling import edm_sigmas, edm_time_grid

    with jax.enable_x64(True):
        ts = np.asarray(edm_time_grid(path.snr_inverse, 18, 0.002, 80.0, 7.0))
        sig = np.asarray(edm_sigmas(18, 0.002, 80.0, 7.0))
        assert ts.shape == (19,) and ts[-1] == 1.0 and 0.0 < ts[0] and np.all(np.diff(ts) > 0)
        # The path's own noise-to-signal ratio at the grid times is EDM's sigma. float64; VP loses ~5e-9 relative
        # near t = 1 (sigma = 0.002), where its clock s = 1 - t is recovered from log alpha ~ -2e-6.
        noise_to_signal = np.asarray(jax.vmap(lambda t: 1.0 / path.snr(t))(jnp.asarray(ts[:-1])))
        np.testing.assert_allclose(noise_to_signal, sig[:-1], rtol=1e-7)
    if isinstance(path, P.AffinePath) and isinstance(path.schedule, P.CondOT):
        # Closed form for Cond-OT: sigma(t) = (1 - t) / t, so t = 1 / (1 + sigma).
        np.testing.assert_allclose(ts[:-1], 1.0 / (1.0 + sig[:-1]), rtol=1e-6)
        if isinstance(path, P.AffinePath) and isinstance(path.schedule, P.VP):
            # The closed form sigma(t)/alpha(t) of the VP schedule (float64; the inverse is its own closed form).
            sch = path.schedule
            ratio = np.asarray(jax.vmap(lambda t: sch.sigma(t) / sch.alpha(t))(jnp.asarray(ts[:-1])))
            np.testing.assert_allclose(ratio, sig[:-1], rtol=1e-7)


def test_edm_sampler_is_heun_then_one_euler_step_with_2n_minus_1_evaluations():
    from fm_jax import sample_edm
    from fm_jax.sampling import edm_time_grid

    calls = []

    def apply(params, z, t):
        jax.debug.callback(lambda: calls.append(1))
        return params * z * (1.0 + t)

    path = P.AffinePath(P.CondOT())
    n, key = 6, jax.random.key(3)
    res = sample_edm(key, path, apply, jnp.asarray(-0.7), 5, (2,), num_steps=n)
    jax.effects_barrier()
    assert int(res.nfe) == 2 * n - 1 == len(calls)
    # By hand: start from the path's noise part at t_0, Heun on t_0 … t_{N−1}, Euler to t_N = 1.
    ts = np.asarray(edm_time_grid(path.snr_inverse, n), np.float64)
    f = lambda t, z: -0.7 * z * (1.0 + t)  # noqa: E731
    x0 = np.asarray(jax.vmap(lambda k: path.sample_source(k, (2,)))(jax.random.split(key, 5)), np.float64)
    z = (1.0 - ts[0]) * x0
    for a, b in zip(ts[:-2], ts[1:-1]):
        d = f(a, z)
        z_pred = z + (b - a) * d
        z = z + (b - a) * 0.5 * (d + f(b, z_pred))
    z = z + (ts[-1] - ts[-2]) * f(ts[-2], z)
    np.testing.assert_allclose(np.asarray(res.samples), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.ts), ts, rtol=1e-6)


def test_edm_sampler_compiles_once_across_sigmas_and_refuses_paths_without_snr():
    from fm_jax import sample_edm

    traces = []

    def apply(params, z, t):
        traces.append(1)
        return params * z

    counts = []
    for smin, smax in ((0.002, 80.0), (0.01, 20.0), (0.02, 50.0)):
        sample_edm(jax.random.key(0), P.AffinePath(P.CondOT()), apply, jnp.asarray(0.5), 3, (2,), num_steps=4,
                   sigma_min=jnp.asarray(smin), sigma_max=jnp.asarray(smax))
        counts.append(len(traces))
    assert counts[0] > 0 and counts[0] == counts[1] == counts[2], counts
    with pytest.raises(TypeError, match="signal-to-noise"):
        sample_edm(jax.random.key(0), P.KacPath(), apply, jnp.asarray(0.5), 3, (2,), num_steps=4)


@pytest.mark.parametrize("path,source_std", [(P.AffinePath(P.CondOT()), 1.0), (P.AffinePath(P.VP()), None),
                                             (P.OscillationHGFPath(0.5, 2.0), 4.0)], ids=["cond_ot", "vp", "hgf_osc"])
def test_snr_is_the_interpolants_signal_over_noise_and_inverts(path, source_std):
    # x_t = a(t) x1 + b(t) ε with x0 = source_std · ε: a = interpolate(0, 1, t), b = interpolate(source_std, 0, t).
    s0 = float(path.schedule.sigma(0.0)) if source_std is None else source_std
    with jax.enable_x64(True):
        ts = jnp.linspace(0.05, 0.95, 7)
        a = jax.vmap(lambda t: path.interpolate(jnp.zeros(()), jnp.ones(()), t))(ts)
        b = jax.vmap(lambda t: path.interpolate(jnp.asarray(s0), jnp.zeros(()), t))(ts)
        # The paths' hyper-parameters were made in float32 (outside x64): agreement to float32 rounding, 1e-6.
        np.testing.assert_allclose(jax.vmap(path.snr)(ts), a / b, rtol=1e-6)
        np.testing.assert_allclose(jax.vmap(lambda t: path.snr_inverse(path.snr(t)))(ts), ts, rtol=1e-6)
    assert isinstance(path, P.AbstractSignalToNoise) and not isinstance(P.KacPath(), P.AbstractSignalToNoise)
