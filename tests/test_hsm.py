"""Hamiltonian score matching: the min-max objective against the closed-form HSD of Gaussian data with a linear
force, the stop-gradient split used with the trainer, training to the true score, and the DSM baseline."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fm_jax import hamiltonian as H
from fm_jax import hsm
from fm_jax.training import init_train_state, make_train_step

S2 = 0.5  # data variance: pi = N(0, S2 I); the true force is -x / S2 (k* = 2)


def linear_force(params, x):
    return -params["k"] * x


def oracle_velocity(tau_max):
    """V(x, s) = beta(s T; k_v) x: the exact HVP for the force -k_v x (params {"k": k_v})."""

    def apply(params, x, s):
        beta, _ = H.linear_force_gaussian_hvp(params["k"], S2, s * tau_max)
        return beta[:, None] * x

    return apply


def poly_velocity(params, x, s):
    """V(x, s) = (a1 s + a2 s^2 + a3 s^3) x: rich enough for the HVP of Gaussian data under a linear force."""
    beta = params["a"][0] * s + params["a"][1] * s**2 + params["a"][2] * s**3
    return beta[:, None] * x


def data(key, n, d=2):
    return math.sqrt(S2) * jax.random.normal(key, (n, d))


def test_objective_with_oracle_predictor_equals_hsd_over_t():
    with jax.enable_x64(True):
        T, k, n = 1.0, 1.0, 40_000
        problem = hsm.HamiltonianScoreMatching(tau_max=T, n_steps=16)
        x0 = data(jax.random.key(0), n)
        key = jax.random.key(1)
        apply_v = oracle_velocity(T)
        objective = functools.partial(hsm.hsm_objective, force_apply=linear_force, velocity_apply=apply_v)
        J = jax.jit(objective)({"k": k}, {"k": k}, key, x0, problem)
        sim = functools.partial(hsm.simulate, force_apply=linear_force)
        tau, x, v = jax.jit(sim)({"k": k}, key, x0, problem)
        pred = apply_v({"k": k}, x, tau / T)
        per = jnp.sum(v**2, -1) - jnp.sum((v - pred) ** 2, -1)
        np.testing.assert_allclose(J, jnp.mean(per), rtol=1e-12)  # same key, same draws
        exact = H.linear_force_gaussian_hsd(k, S2, T, 2) / T
        se = float(jnp.std(per)) / math.sqrt(n)
        assert abs(float(J) - float(exact)) < 5 * se, (J, exact, se)  # 5 standard errors


def test_force_gradient_matches_derivative_of_closed_form_hsd():
    # Envelope theorem: at the optimal predictor, dJ/dk = d(HSD_T / T)/dk; the gradient flows through Verlet.
    with jax.enable_x64(True):
        T, n = 1.0, 20_000
        problem = hsm.HamiltonianScoreMatching(tau_max=T, n_steps=16)
        x0 = data(jax.random.key(2), n)
        apply_v = oracle_velocity(T)
        grad_fn = jax.jit(
            jax.grad(
                functools.partial(hsm.hsm_objective, problem=problem, force_apply=linear_force, velocity_apply=apply_v)
            )
        )
        for k in [1.0, 3.0]:
            grads = []
            for i in range(4):  # four independent batches give the Monte Carlo spread
                p = {"k": jnp.asarray(k)}
                grads.append(float(grad_fn(p, p, jax.random.key(10 + i), x0)["k"]))
            exact = float(jax.grad(lambda kk: H.linear_force_gaussian_hsd(kk, S2, T, 2) / T)(k))
            spread = np.std(grads, ddof=1) / math.sqrt(len(grads))
            assert abs(np.mean(grads) - exact) < 5 * spread + 0.02 * abs(exact), (k, grads, exact)
            assert np.sign(np.mean(grads)) == np.sign(k - 1 / S2)  # descent moves k towards the true 1/S2


def test_hsm_loss_splits_gradients_between_players():
    T = 0.8
    problem = hsm.HamiltonianScoreMatching(tau_max=T, n_steps=3)
    x0 = data(jax.random.key(3), 256)
    key = jax.random.key(4)
    params = {"force": {"k": jnp.asarray(1.2)}, "velocity": {"a": jnp.array([0.1, -0.2, 0.05])}}
    loss_fn = functools.partial(hsm.hsm_loss, force_apply=linear_force, velocity_apply=poly_velocity)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, key, x0, problem)
    objective = functools.partial(hsm.hsm_objective, force_apply=linear_force, velocity_apply=poly_velocity)
    g_force = jax.jit(jax.grad(objective))(params["force"], params["velocity"], key, x0, problem)

    def regression(phi):
        tau, x, v = hsm.simulate(params["force"], key, x0, problem, force_apply=linear_force)
        return jnp.mean(jnp.sum((v - poly_velocity(phi, x, tau / T)) ** 2, -1))

    g_vel = jax.jit(jax.grad(regression))(params["velocity"])
    np.testing.assert_allclose(grads["force"]["k"], g_force["k"], rtol=1e-5)
    np.testing.assert_allclose(grads["velocity"]["a"], g_vel["a"], rtol=1e-5)
    np.testing.assert_allclose(metrics["hsm"] + metrics["velocity_mse"], loss, rtol=1e-6)


def test_hsm_with_the_trainer_learns_the_gaussian_score():
    T = 1.0
    problem = hsm.HamiltonianScoreMatching(tau_max=T, n_steps=4)
    params = {"force": {"k": jnp.asarray(0.5)}, "velocity": {"a": jnp.zeros(3)}}
    opt = hsm.hsm_optimizer(optax.adam(0.03), optax.adam(0.1))
    step = make_train_step(
        functools.partial(hsm.hsm_loss, force_apply=linear_force, velocity_apply=poly_velocity), opt, ema_decay=0.9
    )
    state = init_train_state(jax.random.key(5), params, opt)
    for i in range(400):
        state, metrics = step(state, data(jax.random.key(100 + i), 512), problem)
    k = float(state.params["force"]["k"])
    assert abs(k - 1 / S2) < 0.2, k  # true force -x/S2 = -2x; the 10 % band covers Adam's jitter


def test_alternating_step_learns_the_gaussian_score():
    T = 1.0
    problem = hsm.HamiltonianScoreMatching(tau_max=T, n_steps=4)
    f_opt, v_opt = optax.adam(0.03), optax.adam(0.1)
    step = hsm.make_hsm_alternating_step(linear_force, poly_velocity, f_opt, v_opt, inner_steps=2)
    state = hsm.init_hsm_state({"k": jnp.asarray(3.5)}, {"a": jnp.zeros(3)}, f_opt, v_opt)
    for i in range(250):
        state, metrics = step(state, jax.random.key(i), data(jax.random.key(1000 + i), 512), problem)
    k = float(state.force_params["k"])
    assert abs(k - 1 / S2) < 0.2, k


def test_dsm_gradient_vanishes_at_the_smoothed_score():
    # E||sigma s(x0 + sigma eps) + eps||^2 with s = -k x has its minimum at k = 1 / (S2 + sigma^2).
    with jax.enable_x64(True):
        sigma, n = 0.3, 200_000
        x0 = data(jax.random.key(6), n)

        def loss(k):
            return hsm.denoising_score_matching_loss({"k": k}, jax.random.key(7), x0, sigma, score_apply=linear_force)[
                0
            ]

        k_star = 1 / (S2 + sigma**2)
        # Exact derivative per dim: 2 sigma^2 (k (S2 + sigma^2) - 1); at k_star it is 0; MC sd ~ 2 sigma^2 sqrt(2/n).
        tol = 5 * 2 * sigma**2 * 2 * math.sqrt(2 / n) * 4
        assert abs(float(jax.grad(loss)(k_star))) < tol
        k = 3.0
        np.testing.assert_allclose(jax.grad(loss)(k), 2 * 2 * sigma**2 * (k * (S2 + sigma**2) - 1), rtol=0.02)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"tau_max": 0.0}, "tau_max"), ({"sigma_v": -1.0}, "sigma_v"), ({"n_steps": 0}, "n_steps")],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hsm.HamiltonianScoreMatching(**kwargs)
