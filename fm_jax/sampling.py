"""Sampling with Diffrax: integrate dz/dt = path.vector_field(model(z, t), z, t) between any two times.

`sample` draws source states and integrates from t = 0 to t = 1; `sample_from` starts from given states z0 and
integrates between any two times (t0 > t1 runs backwards, e.g. data -> noise to encode, `t0=1, t1=0`); `integrate`
does the same for any vector field. Time grids: `num_steps` with a fixed-step solver (Euler, Heun, Midpoint, …)
uses `diffrax.StepTo` on an exact uniform grid, so a step count is never silently changed; `ts` gives any
strictly monotone grid (non-uniform, ascending or descending), on which a fixed-step solver steps and at which the
states are returned; `num_steps=None` uses an adaptive solver (Tsit5, Dopri5) with a PID controller (saving at
`ts` if given). Any Diffrax solver works.

NFE (model evaluations) is counted from Diffrax's step statistics (`sol.stats["num_accepted_steps"]`,
`["num_rejected_steps"]`) times the solver's evaluations per step, read from its Butcher tableau for explicit
Runge–Kutta solvers (stages, minus one for first-same-as-last tableaus, which spend one extra evaluation at the
start) and known for Euler. For other solvers (implicit, reversible, SDE, multi-tableau) the count is not known
and `nfe` is `None` (tested against an explicit counter).

EDM sampling (`sample_edm`; Karras et al. 2022, Algorithm 1 without churn): the ρ-schedule of noise levels
σ_i = (σ_max^{1/ρ} + i/(N−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i < N, σ_N = 0 (`edm_sigmas`, Eq. 5), mapped to the
path's time through its signal-to-noise ratio, t_i = snr⁻¹(1/σ_i), t_N = 1 (`edm_time_grid`; paths that are
`AbstractSignalToNoise`); Heun steps on every interval but the last, which is an Euler step (EDM's second-order
correction is skipped where σ = 0), so N steps cost 2N − 1 model evaluations, EDM's count.

Log-likelihood integrates the state and the divergence of the velocity backwards from the data at t = 1 to the
source at t = 0 (instantaneous change of variables, Chen et al. 2018):
    log p_1(x) = log p_0(z_0) − ∫_0^1 div u_t(z_t) dt,
with the divergence estimator passed as an object, the way Diffrax takes solvers: `Exact()` (one forward-mode
Jacobian per example, cost d jvps; low dimension) or `Hutchinson(num_probes)` (FFJORD, Grathwohl et al. 2019:
div u ≈ mean over Rademacher probes ε, fixed per example along the trajectory, of εᵀ (∂u/∂z) ε; unbiased, one jvp
per probe; needs a `key`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import is_concrete
from ._typing import Array, Key, Params, PyTree, Scalar, State
from .paths.base import AbstractInterpolantPath, AbstractPath, AbstractSignalToNoise, AbstractSourceDensity


class SampleResult(NamedTuple):
    """End points in data space, the final state, the NFE used (None if not countable), and (optionally) the states
    at the times `ts` (leading time axis)."""

    samples: Array
    state: State
    nfe: Array | None
    trajectory: State | None
    ts: Array | None


def evaluations_per_step(solver: diffrax.AbstractSolver) -> tuple[int, bool] | None:
    """(vector-field evaluations per attempted step, whether one extra evaluation is spent at the start) for
    `solver`, or None where it cannot be known (implicit, reversible, multi-tableau and other solvers).

    Explicit Runge–Kutta: an s-stage tableau costs s evaluations a step, or s − 1 when first-same-as-last (the
    last stage is the next step's first; the first step's first stage is the extra evaluation). Euler: 1.
    """
    if isinstance(solver, diffrax.Euler):
        return 1, False
    if isinstance(solver, diffrax.AbstractERK) and isinstance(solver.tableau, diffrax.ButcherTableau):
        stages = len(solver.tableau.c) + 1
        return (stages - 1, True) if solver.tableau.fsal else (stages, False)
    return None


def count_nfe(solver: diffrax.AbstractSolver, num_accepted: Array, num_rejected: Array) -> Array | None:
    """Model evaluations used by a Diffrax solve with `solver`, from its accepted and rejected step counts; None
    when the solver's evaluations per step are not known (see `evaluations_per_step`)."""
    per_step = evaluations_per_step(solver)
    if per_step is None:
        return None
    n, extra = per_step
    return n * (num_accepted + num_rejected) + (1 if extra else 0)


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


def _check_grid(ts) -> Array:
    """`ts` as a 1-D array of at least two strictly monotone times (values checked where concrete)."""
    ts = jnp.asarray(ts, dtype=jnp.result_type(ts, float))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D grid of at least 2 times, got shape {ts.shape}")
    if is_concrete(ts):
        d = np.diff(np.asarray(ts))
        if not (np.all(d > 0) or np.all(d < 0)):
            raise ValueError(f"ts must be strictly increasing or strictly decreasing, got {np.asarray(ts).tolist()}")
    return ts


def _check_integrate_args(solver, num_steps, ts, save_trajectory):
    if num_steps is not None and num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    if num_steps is None and not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        raise ValueError(f"{type(solver).__name__} is not adaptive; give num_steps (or ts) or use Tsit5/Dopri5")
    if ts is not None:
        if save_trajectory is not None:
            raise ValueError("give ts (the times to step on and save at) or save_trajectory, not both")
        return _check_grid(ts)
    if save_trajectory is not None and save_trajectory < 2:
        raise ValueError(f"save_trajectory must be at least 2 (both end points), got {save_trajectory}")
    return None


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
    ts: Array | None = None,
    save_trajectory: int | None = None,
    max_steps: int = 16_384,
) -> tuple[State, Array | None, State | None, Array | None]:
    """Integrate dz/dt = vector_field(t, z) from t0 to t1 (t1 < t0 integrates backwards).

    Args:
        vector_field: `f(t, z) -> dz/dt` on the (batched) state.
        z0: initial state (array or pytree).
        solver: any Diffrax solver. num_steps: fixed uniform grid of this many steps, or None for adaptive
            stepping with a PID controller at (rtol, atol) (needs an adaptive solver).
        t0, t1: start and end times (ignored when `ts` is given).
        ts: a grid (m,) of strictly monotone times, ascending or descending, uniform or not; the solve runs from
            ts[0] to ts[-1], a fixed-step solver steps exactly on it (num_steps is then only "not None"), and the
            states at every ts are returned as the trajectory.
        save_trajectory: if given (and ts is not), also return the state at this many uniformly spaced times.
    Returns:
        (z1, nfe, trajectory or None, ts or None); trajectory leaves have a leading time axis; nfe is None when
        the solver's evaluations per step are not known (see `count_nfe`).
    Example:
        >>> z1, nfe, traj, ts = integrate(f, z0, ts=jnp.array([1.0, 0.9, 0.5, 0.0]))   # three steps, backwards
    """
    ts = _check_integrate_args(solver, num_steps, ts, save_trajectory)
    return _integrate(vector_field, z0, solver=solver, num_steps=num_steps, rtol=rtol, atol=atol, t0=t0, t1=t1,
                      ts=ts, save_trajectory=save_trajectory, max_steps=max_steps)


@eqx.filter_jit
def _integrate(vector_field, z0, *, solver, num_steps, rtol, atol, t0, t1, ts, save_trajectory, max_steps):
    grid_given = ts is not None
    if grid_given:
        t0, t1 = ts[0], ts[-1]
    if num_steps is not None:
        step_ts = ts if grid_given else jnp.linspace(t0, t1, num_steps + 1)
        controller = diffrax.StepTo(ts=step_ts)
        dt0 = None
        max_steps = step_ts.shape[0] - 1
    else:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = (t1 - t0) / 100
    if not grid_given and save_trajectory is not None:
        ts = jnp.linspace(t0, t1, save_trajectory)
    saveat = diffrax.SaveAt(ts=ts) if ts is not None else diffrax.SaveAt(t1=True)
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
    z1 = jax.tree_util.tree_map(lambda y: y[-1], sol.ys)
    if ts is not None:
        return z1, nfe, sol.ys, ts
    return z1, nfe, None, None


def sample_from(
    path: AbstractPath,
    apply: Callable,
    params: Params,
    z0: State,
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),
    num_steps: int | None = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t0: float = 0.0,
    t1: float = 1.0,
    ts: Array | None = None,
    save_trajectory: int | None = None,
    cond: PyTree[Array] | None = None,
    guidance_scale: Array | float | None = None,
    null_cond: PyTree[Array] | None = None,
) -> SampleResult:
    """Integrate the model's vector field from given states z0 (batched, leading axis n) between two times.

    Forwards (t0 = 0, t1 = 1) this is sampling from chosen source draws; backwards (t0 = 1, t1 = 0) it encodes
    data into the source (first-order paths, whose state is the data point), and decoding the code again returns
    the data up to the solver's error.
    Args:
        path, apply, params: as in `sample`. z0: batched states, (n, *d) for first-order paths.
        solver, num_steps, rtol, atol, t0, t1, ts, save_trajectory: as in `integrate`.
        cond, guidance_scale, null_cond: conditioning and classifier-free guidance (`model_vector_field`).
    Returns:
        `SampleResult(path.readout(z_end), z_end, nfe, trajectory, ts)`.
    Example:
        >>> code = sample_from(path, apply, params, x, t0=1.0, t1=0.0, num_steps=50).state       # encode
        >>> x_back = sample_from(path, apply, params, code, num_steps=50).samples                # decode
    """
    ts = _check_integrate_args(solver, num_steps, ts, save_trajectory)
    return _sample_from(path, apply, params, z0, cond, guidance_scale, null_cond, solver=solver, num_steps=num_steps,
                        rtol=rtol, atol=atol, t0=t0, t1=t1, ts=ts, save_trajectory=save_trajectory)


@eqx.filter_jit
def _sample_from(path, apply, params, z0, cond, guidance_scale, null_cond, *, solver, num_steps, rtol, atol, t0, t1,
                 ts, save_trajectory):
    # Compiled with path, apply and params as arguments (the vector field is built inside the trace), so new
    # parameters or hyper-parameter values reuse the compiled solve.
    z1, nfe, traj, ts_out = _integrate(
        model_vector_field(path, apply, params, cond, guidance_scale, null_cond), z0, solver=solver,
        num_steps=num_steps, rtol=rtol, atol=atol, t0=t0, t1=t1, ts=ts, save_trajectory=save_trajectory,
        max_steps=16_384,
    )
    return SampleResult(path.readout(z1), z1, nfe, traj, ts_out)


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
    ts: Array | None = None,
    save_trajectory: int | None = None,
    cond: PyTree[Array] | None = None,
    guidance_scale: Array | float | None = None,
    null_cond: PyTree[Array] | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> SampleResult:
    """Draw `num_samples` from the source, integrate the model's vector field from t = 0 to 1, read out.

    Args:
        key: PRNG key for the source draws. path: the path the model was trained on.
        apply, params: the batched model `apply(params, z, t)`.
        data_shape: shape of one data example (*d).
        solver, num_steps, rtol, atol, ts, save_trajectory: as in `integrate` (a grid `ts` should run from 0 to 1).
        cond, guidance_scale, null_cond: conditioning (leading axis num_samples) and classifier-free guidance,
            as in `model_vector_field`; pass guidance_scale as an array to change it without recompiling.
        sharding: where the source draws (and `cond`) go before the solve, e.g. `NamedSharding(mesh, P("data"))`
            to split the samples over a mesh's data axis (num_samples divisible by its size; params replicated on
            it or uncommitted): the solve then runs data-parallel, with the same draws and the same samples up to
            float round-off. None: one device.
    Returns:
        `SampleResult(samples (n, *d), state, nfe, trajectory, ts)`.

    Compiled once per (apply, shapes, solver, step count): the path and params are traced arguments, so new
    parameters or hyper-parameter values reuse the compiled sampler.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    z0 = _place(_draw_source(key, path, num_samples, tuple(data_shape)), sharding)
    cond = _place(cond, sharding)
    return sample_from(path, apply, params, z0, solver=solver, num_steps=num_steps, rtol=rtol, atol=atol, ts=ts,
                       save_trajectory=save_trajectory, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond)


def _place(z0, sharding):
    """Batched leaves (leading axis n) onto `sharding`, with a clear error where n does not split."""
    if sharding is None or z0 is None:
        return z0

    def put(x):
        try:
            sharding.shard_shape(x.shape)
        except ValueError as err:
            raise ValueError(f"sharding: {x.shape[0]} samples cannot be split over {sharding} ({err})") from None
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map(put, z0)


@eqx.filter_jit
def _draw_source(key, path, num_samples, data_shape):
    keys = jax.random.split(key, num_samples)
    return jax.vmap(lambda k: path.sample_source(k, data_shape))(keys)


# --------------------------------------------------------------------------------------------------------------
# EDM's time grid and sampler


def edm_sigmas(num_steps: int, sigma_min: Scalar = 0.002, sigma_max: Scalar = 80.0, rho: Scalar = 7.0) -> Array:
    """EDM's noise levels (N + 1,): σ_i = (σ_max^{1/ρ} + i/(N−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i < N, σ_N = 0.

    Karras et al. 2022, Eq. 5 (σ_0 = σ_max, σ_{N−1} = σ_min, decreasing). N = `num_steps` (static) ≥ 1; for N = 1
    the grid is (σ_max, 0). The float arguments may be traced (no recompilation when they change).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    sigma_min, sigma_max, rho = (jnp.asarray(v, dtype=jnp.result_type(float)) for v in (sigma_min, sigma_max, rho))
    frac = jnp.arange(num_steps, dtype=sigma_max.dtype) / max(num_steps - 1, 1)
    sigmas = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return jnp.concatenate([sigmas, jnp.zeros((1,), sigmas.dtype)])


def edm_time_grid(
    snr_inverse: Callable[[Scalar], Scalar],
    num_steps: int,
    sigma_min: Scalar = 0.002,
    sigma_max: Scalar = 80.0,
    rho: Scalar = 7.0,
) -> Array:
    """EDM's ρ-schedule (`edm_sigmas`) as times (N + 1,) of a path: t_i = snr⁻¹(1/σ_i) for i < N and t_N = 1.

    EDM's σ is the noise-to-signal ratio of x_t = a(t) x1 + b(t) ε (x_t / a = x1 + σ ε), so σ = 1 / snr(t). For
    Cond-OT (a = t, b = 1 − t) t_i = 1 / (1 + σ_i); σ = 80 → t ≈ 0.0123, σ = 0.002 → t ≈ 0.998. Increasing in i.
    Args:
        snr_inverse: scalar t(snr), e.g. `path.snr_inverse` of an `AbstractSignalToNoise` path.
        num_steps: N (static). sigma_min, sigma_max, rho: EDM's defaults 0.002, 80, 7 (traceable).
    """
    sigmas = edm_sigmas(num_steps, sigma_min, sigma_max, rho)
    ts = jax.vmap(snr_inverse)(1.0 / sigmas[:-1])
    return jnp.concatenate([ts, jnp.ones((1,), ts.dtype)])


def sample_edm(
    key: Key,
    path: AbstractPath,
    apply: Callable,
    params: Params,
    num_samples: int,
    data_shape: tuple[int, ...],
    *,
    num_steps: int = 18,
    sigma_min: Scalar = 0.002,
    sigma_max: Scalar = 80.0,
    rho: Scalar = 7.0,
    cond: PyTree[Array] | None = None,
    guidance_scale: Array | float | None = None,
    null_cond: PyTree[Array] | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> SampleResult:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1, S_churn = 0) on the path's time axis.

    Times t_0 < … < t_N = 1 from `edm_time_grid(path.snr_inverse, N, σ_min, σ_max, ρ)`. As EDM starts from pure
    noise at σ_max (x ~ N(0, σ_max² I), the data term neglected), the start state is the path's noise part at t_0:
    z(t_0) = interpolate(x0, 0, t_0) = b(t_0) ε with x0 a source draw (the signal a(t_0) x1, |a(t_0)| ≈ 1/σ_max
    of the noise scale, is dropped). Steps 0 … N−2 are Heun (trapezoidal) steps, the last an Euler step to t = 1:
    NFE = 2N − 1 (EDM's count: 35 for N = 18).

    Args:
        path: an `AbstractInterpolantPath` that is `AbstractSignalToNoise` (affine Gaussian paths, the
            oscillation HGF). Others (`sharding` too): as in `sample`.
    Returns:
        `SampleResult(samples (n, *d), state, nfe = 2N − 1, None, ts (N + 1,))`.
    """
    if not (isinstance(path, AbstractSignalToNoise) and isinstance(path, AbstractInterpolantPath)):
        raise TypeError(f"EDM sampling needs an interpolant path with a signal-to-noise ratio "
                        f"(AbstractSignalToNoise), got {type(path).__name__}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    x0 = _place(_draw_source(key, path, num_samples, tuple(data_shape)), sharding)
    cond = _place(cond, sharding)
    return _sample_edm(path, apply, params, x0, sigma_min, sigma_max, rho, cond, guidance_scale, null_cond,
                       num_steps=num_steps)


@eqx.filter_jit
def _sample_edm(path, apply, params, x0, sigma_min, sigma_max, rho, cond, guidance_scale, null_cond, *, num_steps):
    ts = edm_time_grid(path.snr_inverse, num_steps, sigma_min, sigma_max, rho).astype(x0.dtype)
    z = jax.vmap(path.interpolate, in_axes=(0, 0, None))(x0, jnp.zeros_like(x0), ts[0])
    field = model_vector_field(path, apply, params, cond, guidance_scale, null_cond)
    nfe = 0
    if num_steps > 1:  # Heun on t_0 … t_{N−1}
        z, n_heun, _, _ = _integrate(field, z, solver=diffrax.Heun(), num_steps=num_steps - 1, rtol=0.0, atol=0.0,
                                     t0=0.0, t1=1.0, ts=ts[:-1], save_trajectory=None, max_steps=num_steps - 1)
        nfe = nfe + n_heun
    z, n_euler, _, _ = _integrate(field, z, solver=diffrax.Euler(), num_steps=1, rtol=0.0, atol=0.0, t0=0.0,
                                  t1=1.0, ts=ts[-2:], save_trajectory=None, max_steps=1)
    return SampleResult(path.readout(z), z, nfe + n_euler, None, ts)


# --------------------------------------------------------------------------------------------------------------
# Divergence estimators and the log-likelihood


class AbstractDivergence(eqx.Module):
    """How `log_likelihood` gets div f = tr(∂f/∂z) of a single-example field f: (*d) -> (*d)."""

    @abc.abstractmethod
    def probes(self, key: Key | None, z: Array) -> PyTree:
        """Per-example randomness drawn once for the whole trajectory (z: one example (*d))."""

    @abc.abstractmethod
    def value_and_divergence(self, f: Callable[[Array], Array], z: Array, probes: PyTree) -> tuple[Array, Scalar]:
        """(f(z), divergence of f at z or an estimate of it) for one example z: (*d)."""


class Exact(AbstractDivergence):
    """Exact divergence from one forward-mode Jacobian (d jvps per evaluation): for low dimension."""

    def probes(self, key, z):
        del key, z
        return None

    def value_and_divergence(self, f, z, probes):
        del probes

        def flat(y):
            out = f(y.reshape(z.shape))
            return out.reshape(-1), out

        jac, value = jax.jacfwd(flat, has_aux=True)(z.reshape(-1))
        return value, jnp.trace(jac)


class Hutchinson(AbstractDivergence):
    """Hutchinson's unbiased estimate mean_k ε_kᵀ (∂f/∂z) ε_k with `num_probes` Rademacher probes ε_k per example,
    fixed along the trajectory. Variance per probe: 2 Σ_{i≠j} A_ij² for a symmetric Jacobian A (zero when A is
    diagonal). One jvp per probe and evaluation."""

    num_probes: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if self.num_probes < 1:
            raise ValueError(f"Hutchinson num_probes must be a positive integer, got {self.num_probes}")

    def probes(self, key, z):
        return jax.random.rademacher(key, (self.num_probes,) + z.shape, dtype=z.dtype)

    def value_and_divergence(self, f, z, probes):
        value, jvps = jax.vmap(lambda e: jax.jvp(f, (z,), (e,)), out_axes=(None, 0))(probes)
        return value, jnp.mean(jnp.sum((probes * jvps).reshape(self.num_probes, -1), axis=-1))


class LikelihoodResult(NamedTuple):
    """log p_1(x) (n,), the NFE used (None if not countable), and the source points z_0 (n, *d) the data map to."""

    log_prob: Array
    nfe: Array | None
    source: Array


def log_likelihood(
    path: AbstractPath,
    apply: Callable,
    params: Params,
    x: Array,
    *,
    divergence: AbstractDivergence = Exact(),
    key: Key | None = None,
    source_log_prob: Callable[[Array], Scalar] | None = None,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    return_source: bool = False,
    cond: PyTree[Array] | None = None,
    guidance_scale: Array | float | None = None,
    null_cond: PyTree[Array] | None = None,
):
    """Log-density log p_1(x) of the model's flow at data points x: (n, *d) (first-order paths).

    Integrates (z, Δ) backwards from (x, 0) at t = 1 to t = 0 with dΔ/dt = −div u_t(z), so that
    log p_1(x) = log p_0(z_0) − Δ(0) with Δ(0) = ∫_0^1 div u_t(z_t) dt. The source must have a density (the path
    is an `AbstractSourceDensity`, or a `source_log_prob` is given here, e.g. for a model trained from another
    source law).
    Args:
        divergence: `Exact()` (default) or `Hutchinson(num_probes)` (unbiased; needs `key`).
        key: PRNG key for the divergence estimator's probes (unused by `Exact`).
        source_log_prob: log-density of one source point `(*d) -> ()`; default `path.source_log_prob`.
        solver, num_steps, rtol, atol: as in `integrate`.
        return_source: also return the source points z_0.
        cond (leading axis n), guidance_scale, null_cond: conditioning and guidance as in `model_vector_field`
            (then the result is log p_1(x | cond)).
    Returns:
        (log_prob (n,), nfe), or `LikelihoodResult(log_prob, nfe, source)` with `return_source=True`.
    """
    if isinstance(divergence, Hutchinson) and key is None:
        raise ValueError("Hutchinson divergence draws random probes: pass key=jax.random.key(...)")
    if source_log_prob is None:
        if not isinstance(path, AbstractSourceDensity):
            raise TypeError(f"{type(path).__name__} has no source density (not an AbstractSourceDensity): the "
                            "likelihood needs a source law with a density, or pass source_log_prob")
        source_log_prob = path.source_log_prob
    result = _log_likelihood(path, apply, params, x, divergence, key, source_log_prob, cond, guidance_scale,
                             null_cond, solver=solver, num_steps=num_steps, rtol=rtol, atol=atol)
    return result if return_source else (result.log_prob, result.nfe)


@eqx.filter_jit
def _log_likelihood(path, apply, params, x, divergence, key, source_log_prob, cond, guidance_scale, null_cond, *,
                    solver, num_steps, rtol, atol):
    keys = None if key is None else jax.random.split(key, x.shape[0])
    probes = jax.vmap(divergence.probes, in_axes=(None if keys is None else 0, 0))(keys, x)

    def rhs(t, state):
        z, _ = state

        def one(zi, pi, ci):
            # One example's field (its conditioning given a batch axis of 1); the velocity comes out of the same
            # evaluation as its divergence (no extra model call).
            ci = None if ci is None else jax.tree_util.tree_map(lambda leaf: leaf[None], ci)
            field = model_vector_field(path, apply, params, ci, guidance_scale, null_cond)
            return divergence.value_and_divergence(lambda y: field(t, y[None])[0], zi, pi)

        u, div = jax.vmap(one)(z, probes, cond)
        return u, -div

    init = (x, jnp.zeros(x.shape[0], x.dtype))
    (z0, delta), nfe, _, _ = _integrate(rhs, init, solver=solver, num_steps=num_steps, rtol=rtol, atol=atol, t0=1.0,
                                        t1=0.0, ts=None, save_trajectory=None, max_steps=16_384)
    # Integrating backwards: delta = ∫_1^0 (−div) dt = ∫_0^1 div dt, so log p1 = log p0(z0) − delta.
    return LikelihoodResult(jax.vmap(source_log_prob)(z0) - delta, nfe, z0)
