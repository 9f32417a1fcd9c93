"""Sampler: NFE accounting, exact likelihood against a closed-form density, trajectories."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal

from fm_jax import paths as P
from fm_jax.sampling import integrate, log_likelihood, sample


def _exact_apply(schedule, mean, cov):
    """A 'model' whose prediction is the exact marginal velocity for Gaussian data (batched apply signature)."""

    def apply(params, z, t):
        del params
        return jax.vmap(lambda zi: P.gaussian_marginal_velocity(schedule, mean, cov, zi, t))(z)

    return apply


@pytest.mark.parametrize(
    "solver,num_steps", [(diffrax.Euler(), 7), (diffrax.Heun(), 5), (diffrax.Midpoint(), 4), (diffrax.Tsit5(), None),
                         (diffrax.Dopri5(), None)]
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
        per_step = {diffrax.Euler: 1, diffrax.Heun: 2, diffrax.Midpoint: 2}[type(solver)]
        assert int(nfe) == per_step * num_steps


def test_adaptive_needs_an_adaptive_solver_and_steps_must_be_positive():
    with pytest.raises(ValueError, match="not adaptive"):
        integrate(lambda t, z: z, jnp.ones(2), solver=diffrax.Euler(), num_steps=None)
    with pytest.raises(ValueError, match="positive"):
        integrate(lambda t, z: z, jnp.ones(2), solver=diffrax.Euler(), num_steps=0)


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
