"""Sampling with Diffrax: integrate dz/dt = path.vector_field(model(z, t), z, t) from t = 0 to t = 1.

Fixed grids (`num_steps` with Euler, Heun, Midpoint, …) use `diffrax.StepTo` on an exact uniform grid, so a
step count is never silently changed; adaptive solvers (Tsit5, Dopri5) use a PID controller. Every call
returns the number of model evaluations actually used (NFE), counted from Diffrax's step statistics and the
solver's stage count (tested against an explicit counter).

Exact log-likelihood integrates the state and the divergence of the velocity backwards from the data at t = 1 to
the source at t = 0 (instantaneous change of variables, Chen et al. 2018):
    log p_1(x) = log p_0(z_0) − ∫_0^1 div u_t(z_t) dt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._typing import Array, Key, Params, PyTree, State
from .paths.base import AbstractPath, AbstractSourceDensity

# Model evaluations per attempted step, and whether the solver reuses its last stage (FSAL: one extra
# evaluation at the start of the solve instead of one per step).
_STAGES: dict[type, tuple[int, bool]] = {
    diffrax.Euler: (1, False),
    diffrax.Heun: (2, False),
    diffrax.Midpoint: (2, False),
    diffrax.Ralston: (2, False),
    diffrax.Bosh3: (3, True),
    diffrax.Tsit5: (6, True),
    diffrax.Dopri5: (6, True),
    diffrax.Dopri8: (12, True),
}


class SampleResult(NamedTuple):
    """Samples in data space, the final state, the NFE used, and (optionally) the trajectory of states."""

    samples: Array
    state: State
    nfe: Array
    trajectory: State | None
    ts: Array | None


def count_nfe(solver: diffrax.AbstractSolver, num_accepted: Array, num_rejected: Array) -> Array:
    """Model evaluations used by a Diffrax solve with `solver`, from its accepted and rejected step counts."""
    try:
        per_step, fsal = _STAGES[type(solver)]
    except KeyError:
        raise ValueError(f"NFE accounting does not know solver {type(solver).__name__}; known: "
                         + ", ".join(t.__name__ for t in _STAGES)) from None
    return per_step * (num_accepted + num_rejected) + (1 if fsal else 0)


def model_vector_field(
    path: AbstractPath,
    apply: Callable,
    params: Params,
    cond: PyTree[Array] | None = None,
    guidance_scale: Array | float | None = None,
    null_cond: PyTree[Array] | None = None,
) -> Callable[[Array, State], State]:
    """The ODE right-hand side f(t, z) = path.vector_field(prediction(z, t), z, t) for batched states.

    prediction = apply(params, z, t, cond). With classifier-free guidance (`guidance_scale` w given), the model is
    evaluated with the condition and with the null condition in one batched call, and
        prediction = (1 + w) apply(z, t, cond) − w apply(z, t, null_cond)
    (Ho & Salimans 2022: w = 0 is the plain conditional model, w > 0 sharpens; flow_matching / torchcfm write
    the same mixture as s·cond + (1 − s)·uncond with s = 1 + w). Guidance mixes the model's *prediction* before
    `path.vector_field`, so phase-space paths keep their structure (ForM's speed bound holds for any force).

    Args:
        cond: batched conditioning (leading axis = the batch of z), or None. guidance_scale: w, or None for
            none. null_cond: one example's null condition (e.g. `jnp.asarray(num_classes)`), broadcast over the
            batch; required with guidance.
    """
    if guidance_scale is not None and (cond is None or null_cond is None):
        raise ValueError("classifier-free guidance needs cond (batched) and null_cond (one example's null condition)")

    def f(t, z):
        if cond is None:
            return path.vector_field(apply(params, z, t), z, t)
        if guidance_scale is None:
            return path.vector_field(apply(params, z, t, cond), z, t)
        null = jax.tree_util.tree_map(lambda c, n: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), cond, null_cond)
        both = lambda a, b: jnp.concatenate([a, b], axis=0)
        n = jax.tree_util.tree_leaves(z)[0].shape[0]
        out = apply(params, jax.tree_util.tree_map(both, z, z), t,
                    jax.tree_util.tree_map(both, cond, null))
        w = jnp.asarray(guidance_scale)
        prediction = jax.tree_util.tree_map(lambda o: (1 + w) * o[:n] - w * o[n:], out)
        return path.vector_field(prediction, z, t)

    return f


@eqx.filter_jit
def integrate(
    vector_field: Callable[[Array, State], State],
    z0: State,
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),
    num_steps: int | None = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t0: float = 0.0,
    t1: float = 1.0,
    save_trajectory: int | None = None,
    max_steps: int = 16_384,
) -> tuple[State, Array, State | None, Array | None]:
    """Integrate dz/dt = vector_field(t, z) from t0 to t1.

    Args:
        vector_field: `f(t, z) -> dz/dt` on the (batched) state.
        z0: initial state (array or pytree).
        solver: a Diffrax solver. num_steps: fixed uniform grid of this many steps, or None for adaptive
            stepping with a PID controller at (rtol, atol).
        save_trajectory: if given, also return the state at this many uniformly spaced times (t0 and t1 included).
    Returns:
        (z1, nfe, trajectory or None, ts or None); trajectory leaves have a leading time axis.
    """
    if num_steps is not None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
        controller = diffrax.StepTo(ts=jnp.linspace(t0, t1, num_steps + 1))
        dt0 = None
        max_steps = num_steps
    else:
        if not isinstance(solver, diffrax.AbstractAdaptiveSolver):
            raise ValueError(f"{type(solver).__name__} is not adaptive; give num_steps or use Tsit5/Dopri5")
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = (t1 - t0) / 100
    if save_trajectory is not None:
        ts = jnp.linspace(t0, t1, save_trajectory)
        saveat = diffrax.SaveAt(ts=ts)
    else:
        ts = None
        saveat = diffrax.SaveAt(t1=True)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, z, args: vector_field(t, z)),
        solver,
        t0,
        t1,
        dt0,
        z0,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
    )
    nfe = count_nfe(solver, sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"])
    if save_trajectory is not None:
        z1 = jax.tree_util.tree_map(lambda y: y[-1], sol.ys)
        return z1, nfe, sol.ys, ts
    return jax.tree_util.tree_map(lambda y: y[0], sol.ys), nfe, None, None


@eqx.filter_jit
def sample(
    key: Key,
    path: AbstractPath,
    apply: Callable,
    params: Params,
    num_samples: int,
    data_shape: tuple[int, ...],
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),
    num_steps: int | None = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    save_trajectory: int | None = None,
    cond: PyTree[Array] | None = None,
    guidance_scale: Array | float | None = None,
    null_cond: PyTree[Array] | None = None,
) -> SampleResult:
    """Draw `num_samples` from the source, integrate the model's vector field from t = 0 to 1, read out.

    Args:
        key: PRNG key for the source draws. path: the path the model was trained on.
        apply, params: the batched model `apply(params, z, t)`.
        data_shape: shape of one data example (*d).
        solver, num_steps, rtol, atol, save_trajectory: as in `integrate`.
        cond, guidance_scale, null_cond: conditioning (leading axis num_samples) and classifier-free guidance,
            as in `model_vector_field`; pass guidance_scale as an array to change it without recompiling.
    Returns:
        `SampleResult(samples (n, *d), state, nfe, trajectory, ts)`.

    Compiled once per (apply, shapes, solver, step count): the path and params are traced arguments, so new
    parameters or hyper-parameter values reuse the compiled sampler.
    """
    keys = jax.random.split(key, num_samples)
    z0 = jax.vmap(lambda k: path.sample_source(k, tuple(data_shape)))(keys)
    z1, nfe, traj, ts = integrate(
        model_vector_field(path, apply, params, cond, guidance_scale, null_cond), z0,
        solver=solver, num_steps=num_steps, rtol=rtol, atol=atol,
        save_trajectory=save_trajectory,
    )
    return SampleResult(path.readout(z1), z1, nfe, traj, ts)


def _value_and_divergence(f: Callable[[Array], Array], x: Array) -> tuple[Array, Array]:
    """f(x) and its exact divergence tr(∂f/∂x) for f: (*d) -> (*d), from one forward-mode Jacobian (d jvps)."""

    def flat(y):
        out = f(y.reshape(x.shape))
        return out.reshape(-1), out

    jac, value = jax.jacfwd(flat, has_aux=True)(x.reshape(-1))
    return value, jnp.trace(jac)


@eqx.filter_jit
def log_likelihood(
    path: AbstractPath,
    apply: Callable,
    params: Params,
    x: Array,
    *,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    cond: PyTree[Array] | None = None,
    guidance_scale: Array | float | None = None,
    null_cond: PyTree[Array] | None = None,
) -> tuple[Array, Array]:
    """Exact log-density log p_1(x) of the model's flow at data points x: (n, *d) (first-order paths).

    The divergence is exact (a full Jacobian per example, cost d model jvps), so this is meant for low
    dimension; the source must have a density (the path is an `AbstractSourceDensity`). `cond` (leading axis n),
    `guidance_scale`, `null_cond`: conditioning and guidance as in `model_vector_field` (log p_1(x | cond)).
    Returns:
        (log_prob (n,), nfe).
    """
    if not isinstance(path, AbstractSourceDensity):
        raise TypeError(f"{type(path).__name__} has no source density (not an AbstractSourceDensity); exact "
                        "likelihood needs a path whose source law has a density")

    def single_velocity(z, t, c):
        c = None if c is None else jax.tree_util.tree_map(lambda leaf: leaf[None], c)
        return model_vector_field(path, apply, params, c, guidance_scale, null_cond)(t, z[None])[0]

    def rhs(t, state):
        z, _ = state
        # The velocity comes out of the same Jacobian evaluation as its divergence (no extra model call).
        per_example = lambda zi, ci: _value_and_divergence(lambda y: single_velocity(y, t, ci), zi)
        u, div = jax.vmap(per_example)(z, cond)
        return u, -div

    init = (x, jnp.zeros(x.shape[0], x.dtype))
    (z0, delta), nfe, _, _ = integrate(
        rhs, init, solver=solver, num_steps=num_steps, rtol=rtol, atol=atol, t0=1.0, t1=0.0
    )
    # Integrating backwards: delta = ∫_1^0 (−div) dt = ∫_0^1 div dt, so log p1 = log p0(z0) − delta.
    return jax.vmap(path.source_log_prob)(z0) - delta, nfe
