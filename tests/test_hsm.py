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


# ----------------------------------------------------------------------------------------------- small horizon
def _tiny_mlp_init(key, hidden=16):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (3, hidden)) / math.sqrt(3), "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, 2)) / math.sqrt(hidden), "b2": jnp.zeros(2)}


def _tiny_mlp(params, x, s):
    h = jnp.tanh(jnp.concatenate([x, s[:, None]], axis=1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def test_time_scaled_predictor_is_tau_times_the_network_and_zero_at_tau_zero():
    phi = _tiny_mlp_init(jax.random.key(0))
    x = data(jax.random.key(1), 8)
    s = jnp.linspace(0.0, 1.0, 8)
    pred = hsm.TimeScaledPredictor(_tiny_mlp, 0.3)
    np.testing.assert_allclose(pred(phi, x, s), 0.3 * s[:, None] * _tiny_mlp(phi, x, s), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(pred(phi, x, jnp.zeros(8)), 0.0)  # exact at tau = 0, whatever the parameters
    # tau_max is a leaf: changing it does not recompile.
    f = jax.jit(lambda p, xx, ss: p(phi, xx, ss))
    f(pred, x, s)
    f(hsm.TimeScaledPredictor(_tiny_mlp, 0.7), x, s)
    assert f._cache_size() == 1


def test_time_scaled_predictor_learns_the_small_horizon_predictor_that_a_plain_network_misses():
    """T = 0.01, Gaussian data, force -diag(k) x with k = (1, 3): the optimal predictor is tau (F + x / S2) + O(tau^2),
    of size ~0.01. After the same 300 Adam steps a plain network is still far from it (relative error ~150 on these
    keys: its O(1) initial output has not been unlearned), while tau * net is within its own size (~0.75).
    The relative error is what decides the HSM gradient (experiments/hsm_small_sigma.py)."""
    T = 0.01
    problem = hsm.HamiltonianScoreMatching(tau_max=T, n_steps=1)
    theta = {"k": jnp.array([1.0, 3.0])}

    def force_apply(p, x):
        return -p["k"] * x

    def relative_error(velocity_apply):
        phi = _tiny_mlp_init(jax.random.key(3))
        opt = optax.adam(3e-3)

        def reg(phi, key):
            kx, ks = jax.random.split(key)
            tau, x, v = hsm.simulate(theta, ks, data(kx, 256), problem, force_apply=force_apply)
            return jnp.mean(jnp.sum((v - velocity_apply(phi, x, tau / T)) ** 2, -1))

        def body(carry, i):
            phi, st = carry
            g = jax.grad(reg)(phi, jax.random.fold_in(jax.random.key(4), i))
            upd, st = opt.update(g, st, phi)
            return (optax.apply_updates(phi, upd), st), None

        phi = jax.lax.scan(body, (phi, opt.init(phi)), jnp.arange(300))[0][0]
        tau, x, _ = hsm.simulate(theta, jax.random.key(9), data(jax.random.key(8), 4096), problem,
                                 force_apply=force_apply)
        oracle = tau[:, None] * (force_apply(theta, x) + x / S2)
        return jnp.sum((velocity_apply(phi, x, tau / T) - oracle) ** 2) / jnp.sum(oracle**2)

    err_plain = float(jax.jit(lambda: relative_error(_tiny_mlp))())
    err_scaled = float(jax.jit(lambda: relative_error(hsm.TimeScaledPredictor(_tiny_mlp, T)))())
    assert err_scaled < 1.0, (err_plain, err_scaled)
    assert err_plain > 10 * err_scaled, (err_plain, err_scaled)
