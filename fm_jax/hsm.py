"""Hamiltonian score matching (HSM; Holderrieth, Xu, Jaakkola, NeurIPS 2024) and the denoising baseline.

HSM learns a force field F_theta whose Hamiltonian dynamics dx/dtau = v, dv/dtau = F_theta(x), started from
(x0, v0) ~ pi (x) N(0, sigma_v^2 I), leave the velocity unpredictable from the position: E[v_tau | x_tau] = 0 for
all tau holds iff F_theta = sigma_v^2 grad log pi (HMC invariance). The Hamiltonian score discrepancy

    HSD_T(theta) = int_0^T E || E[v_tau | x_tau] ||^2 dtau
                 = T max_phi E_{tau ~ U[0,T], x0, v0} [ ||v_tau||^2 - ||v_tau - V_phi(x_tau, tau)||^2 ]

(the inner maximum is attained at the velocity predictor V_phi = E[v_tau | x_tau]; papers.md §3.3, variational
form derived there), so HSM is the min-max problem min_theta max_phi of that objective, with the gradient in theta
flowing through the simulated (x_tau, v_tau). For small T, HSD_T ~ (T^3/3) E||F - sigma_v^2 grad log pi||^2: an
explicit score-matching loss.

`hsm_loss` fits the project's single-optimiser trainer (`fm_jax.training.train_step`) by splitting the min-max
with stop-gradients: params = {"force": theta, "velocity": phi}, and

    loss = J(theta, sg(phi)) + E || sg(v_tau) - V_phi(sg(x_tau), tau) ||^2,

so d loss / d theta = d J / d theta (descent on the objective) and d loss / d phi = the gradient of the regression
(descent on the regression = ascent on J, since J = E||v||^2 - regression). That is simultaneous gradient
descent-ascent; `hsm_optimizer` gives the two players their own optimisers (e.g. a faster predictor), and
`make_hsm_alternating_step` runs k predictor steps per force step.

Network conventions: `force_apply(params, x)` maps a batch (B, *d) to forces (B, *d) (time-independent, as HSM
learns grad log pi); `velocity_apply(params, x, s)` takes the batch and s = tau / T in [0, 1] (B,).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ._checks import check_positive
from ._typing import Array, Key, Params, Scalar
from ._util import as_float_array as _array
from .hamiltonian import hamiltonian_flow


class HamiltonianScoreMatching(eqx.Module):
    """Settings of the HSM objective (a pytree: T and sigma_v are array leaves, `n_steps` is static).

    Args:
        tau_max: horizon T > 0 (tau ~ U[0, T]); the positional spread of x_T around x0 is about T sigma_v, the
            analogue of the noise level sigma of denoising score matching.
        sigma_v: velocity scale > 0 (the force then matches sigma_v^2 grad log pi).
        n_steps: velocity-Verlet steps over [0, tau].
    """

    tau_max: Array = eqx.field(converter=_array, default=1.0)
    sigma_v: Array = eqx.field(converter=_array, default=1.0)
    n_steps: int = eqx.field(static=True, default=8)

    def __check_init__(self):
        check_positive(self.tau_max, "HamiltonianScoreMatching tau_max")
        check_positive(self.sigma_v, "sigma_v (the initial velocity scale)")
        if self.n_steps < 1:
            raise ValueError(f"HamiltonianScoreMatching n_steps must be >= 1, got {self.n_steps}")


def simulate(
    force_params: Params,
    key: Key,
    x0: Array,
    problem: HamiltonianScoreMatching,
    *,
    force_apply: Callable,
) -> tuple[Array, Array, Array]:
    """Draw tau ~ U[0, T] and v0 ~ N(0, sigma_v^2 I) per example and integrate the PH-ODE from the data.

    Args: force_params; key; x0 (B, *d) data; problem; force_apply(params, x (B, *d)) -> (B, *d).
    Returns: (tau (B,), x_tau (B, *d), v_tau (B, *d)); differentiable in `force_params`.
    """
    batch = x0.shape[0]
    k_tau, k_v = jax.random.split(key)
    tau = problem.tau_max * jax.random.uniform(k_tau, (batch,), x0.dtype)
    v0 = problem.sigma_v * jax.random.normal(k_v, x0.shape, x0.dtype)

    def force(x, t):
        del t
        return force_apply(force_params, x[None])[0]

    x, v = jax.vmap(lambda a, b, c: hamiltonian_flow(force, a, b, c, n_steps=problem.n_steps))(x0, v0, tau)
    return tau, x, v


class TimeScaledPredictor(eqx.Module):
    """A velocity predictor that vanishes at tau = 0 at the right rate: V(x, s) = T s net(x, s) = tau net(x, s).

    The optimal predictor is E[v_tau | x_tau] = tau (F(x) - sigma_v^2 grad log pi(x)) + O(tau^2), of size
    O(T) on [0, T]. A plain network starts O(1) away from it, and the regression has to learn an output T times
    smaller than its noise before the HSM gradient points the right way; at T = 0.01 a few hundred Adam steps
    do not get there (experiments/hsm_small_sigma.py). Factoring tau out makes the network's target O(1) and
    V(x, 0) = 0 exact for any parameters. `tau_max` is an array leaf (no recompilation when it changes).

    Call: `predictor(params, x (B, *d), s (B,)) -> (B, *d)`, the `velocity_apply` convention of this module.
    """

    apply: Callable = eqx.field(static=True)
    tau_max: Array = eqx.field(converter=_array)

    def __call__(self, params: Params, x: Array, s: Array) -> Array:
        s = jnp.asarray(s)
        out = self.apply(params, x, s)
        scale = (self.tau_max * s).reshape(s.shape + (1,) * (out.ndim - s.ndim))
        return scale * out


def _sq(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1)


def hsm_objective(
    force_params: Params,
    velocity_params: Params,
    key: Key,
    x0: Array,
    problem: HamiltonianScoreMatching,
    *,
    force_apply: Callable,
    velocity_apply: Callable,
) -> Scalar:
    """The HSM min-max objective J(theta, phi) = E[ ||v_tau||^2 - ||v_tau - V_phi(x_tau, tau/T)||^2 ], tau ~ U[0, T].

    max_phi J = HSD_T(theta) / T (papers.md §3.3). Args as in `simulate`, plus
    velocity_apply(params, x (B, *d), s (B,)) -> (B, *d). Returns () the batch mean.
    """
    tau, x, v = simulate(force_params, key, x0, problem, force_apply=force_apply)
    pred = velocity_apply(velocity_params, x, tau / problem.tau_max)
    return jnp.mean(_sq(v) - _sq(v - pred))


def hsm_loss(
    params: dict,
    key: Key,
    x0: Array,
    problem: HamiltonianScoreMatching,
    *,
    force_apply: Callable,
    velocity_apply: Callable,
) -> tuple[Array, dict[str, Array]]:
    """HSM as one loss for a single optimiser: J(theta, sg(phi)) + regression(phi) on stop-gradient samples.

    Matches the trainer's `loss_fn(params, key, batch, path)` (bind the two apply functions with
    `functools.partial`). Its theta-gradient descends the objective J and its phi-gradient descends the predictor
    regression (i.e. ascends J): simultaneous gradient descent-ascent on the min-max problem.

    Args:
        params: {"force": theta, "velocity": phi}. key. x0: data (B, *d). problem: `HamiltonianScoreMatching`.
    Returns:
        (loss, metrics) with metrics "hsm" (J, an estimate of HSD_T / T once the predictor is optimal),
        "velocity_mse" (the predictor's regression loss) and "loss".
    """
    theta, phi = params["force"], params["velocity"]
    tau, x, v = simulate(theta, key, x0, problem, force_apply=force_apply)
    s = tau / problem.tau_max
    pred_fixed = velocity_apply(jax.lax.stop_gradient(phi), x, s)
    objective = jnp.mean(_sq(v) - _sq(v - pred_fixed))
    x_sg, v_sg = jax.lax.stop_gradient((x, v))
    regression = jnp.mean(_sq(v_sg - velocity_apply(phi, x_sg, s)))
    loss = objective + regression
    return loss, {"loss": loss, "hsm": objective, "velocity_mse": regression}


def hsm_optimizer(
    force_optimizer: optax.GradientTransformation, velocity_optimizer: optax.GradientTransformation
) -> optax.GradientTransformation:
    """One optax transformation over {"force", "velocity"} giving each player its own optimiser."""
    return optax.multi_transform(
        {"force": force_optimizer, "velocity": velocity_optimizer},
        {"force": "force", "velocity": "velocity"},
    )


class HSMState(eqx.Module):
    """State of the alternating HSM step: both players' parameters and optimiser states, and the step count."""

    step: Array
    force_params: Params
    velocity_params: Params
    force_opt_state: optax.OptState
    velocity_opt_state: optax.OptState


def init_hsm_state(
    force_params: Params,
    velocity_params: Params,
    force_optimizer: optax.GradientTransformation,
    velocity_optimizer: optax.GradientTransformation,
) -> HSMState:
    """A fresh `HSMState` at step 0."""
    return HSMState(
        jnp.zeros((), jnp.int32),
        force_params,
        velocity_params,
        force_optimizer.init(force_params),
        velocity_optimizer.init(velocity_params),
    )


def make_hsm_alternating_step(
    force_apply: Callable,
    velocity_apply: Callable,
    force_optimizer: optax.GradientTransformation,
    velocity_optimizer: optax.GradientTransformation,
    *,
    inner_steps: int = 1,
):
    """A jitted alternating min-max step: `inner_steps` predictor (max) updates, then one force (min) update.

    Returns `step(state, key, x0, problem) -> (state, metrics)`; each inner update draws fresh (tau, v0) from a
    `fold_in` of `key`, and the force update uses the updated predictor.
    """

    def regression(phi, theta, key, x0, problem):
        tau, x, v = simulate(theta, key, x0, problem, force_apply=force_apply)
        return jnp.mean(_sq(v - velocity_apply(phi, x, tau / problem.tau_max)))

    def step(state: HSMState, key: Key, x0: Array, problem: HamiltonianScoreMatching):
        theta = state.force_params

        def inner(carry, i):
            phi, opt_state = carry
            loss, grads = jax.value_and_grad(regression)(phi, theta, jax.random.fold_in(key, i), x0, problem)
            updates, opt_state = velocity_optimizer.update(grads, opt_state, phi)
            return (optax.apply_updates(phi, updates), opt_state), loss

        (phi, v_opt), mse = jax.lax.scan(
            inner, (state.velocity_params, state.velocity_opt_state), jnp.arange(inner_steps)
        )
        k_force = jax.random.fold_in(key, inner_steps)
        objective, grads = jax.value_and_grad(hsm_objective)(
            theta, phi, k_force, x0, problem, force_apply=force_apply, velocity_apply=velocity_apply
        )
        updates, f_opt = force_optimizer.update(grads, state.force_opt_state, theta)
        theta = optax.apply_updates(theta, updates)
        new_state = HSMState(state.step + 1, theta, phi, f_opt, v_opt)
        return new_state, {"hsm": objective, "velocity_mse": mse[-1]}

    return jax.jit(step)


def denoising_score_matching_loss(
    params: Params,
    key: Key,
    x0: Array,
    sigma: Scalar,
    *,
    score_apply: Callable,
) -> tuple[Array, dict[str, Array]]:
    """Denoising score matching at one noise level (Vincent 2011), sigma^2-weighted:

        E_{x0, eps} || sigma s_theta(x0 + sigma eps) + eps ||^2,

    minimised by s = grad log (pi * N(0, sigma^2 I)). Trainer-compatible (`sigma` in the `path` slot).
    Args: params; key; x0 (B, *d); sigma () > 0; score_apply(params, x (B, *d)) -> (B, *d).
    Returns (loss, {"loss": loss}).
    """
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    pred = score_apply(params, x0 + sigma * eps)
    loss = jnp.mean(_sq(sigma * pred + eps))
    return loss, {"loss": loss}


__all__ = [
    "HSMState",
    "HamiltonianScoreMatching",
    "TimeScaledPredictor",
    "denoising_score_matching_loss",
    "hsm_loss",
    "hsm_objective",
    "hsm_optimizer",
    "init_hsm_state",
    "make_hsm_alternating_step",
    "simulate",
]
