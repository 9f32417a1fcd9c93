"""The relativistic particle simulations of the ForM paper (Onedot, Half-moons, Spiral).

Cao et al. 2025 (arXiv 2502.08150) evaluate on deterministic simulations, not on noise-to-data generation: each
test point starts at x0 with a known velocity v0, is pushed for unit time by a force whose parallel and
perpendicular magnitudes depend only on the step index k, and the models must reproduce the end point. Units
are SI-like: c = 3e8, m = 1, M = 10 steps of dt = 0.1.

- onedot (400 train / 1200 test): x0 on the annulus r ~ U(10, 1e6), angle uniform; v0 = x0;
  F_par = F_perp = 1.5e8.
- halfmoons (500 / 1500): x ~ U(-5, 5), y ~ U(-1e6, 1e6); v0 = (sign(y) 3e8 |sin(3.1415 y / 1e6)|, 0);
  F_par(k) = 1e7 |sin(3.1415 k / 10)|, F_perp(k) = 7e8 |sin(3.1415 * 8 k / 10)|.
- spiral (300 / 900): a uniform mixture of 2000 Gaussians (variance 0.3) at radius (5 theta + 10) 2e4,
  theta in [0, 4 pi); v0 = 60 x0; F_par = 1.5e7, F_perp = 1.5e8.

Two integrators:
- `simulate_reference`: the official code's generator, reproduced with its quirks: Euler on the velocity,
  v <- v + a dt with a = F_par v_hat / (m gamma^3) + F_perp v_hat_perp / (m gamma), gamma = 1 / sqrt(1 - |v|^2 /
  c^2) unguarded, v_hat = v / (|v| + 1e-8), trapezoid positions, and only M - 1 = 9 steps (while every sampler
  of the paper takes M = 10). Its last stored acceleration (index 9, used as a regression target by the O1+O2
  baseline) evaluates the half-moons magnitudes at sin(3.1415 * 7.2) for both components (the code reuses the
  loop variable), while the stored force table uses the formula at k = 9: both kept.
- `simulate_momentum` (ours, consistent): M = 10 steps of `fm_jax.relativistic.relativistic_step` (momentum
  kick, velocity read off the momentum, trapezoid positions), so |v| < c exactly; the recorded acceleration is
  the step-consistent a_k = (v_{k+1} - v_k) / dt, for which x_{k+1} = x_k + v_k dt + a_k dt^2 / 2 holds.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import relativistic as rel
from .._typing import Array, Key

C_LIGHT = 3e8
MASS = 1.0
NUM_STEPS = 10
DT = 1.0 / NUM_STEPS
PI_REF = 3.1415  # the reference code's pi

SIZES = {"onedot": (400, 1200), "halfmoons": (500, 1500), "spiral": (300, 900)}
DATASETS = tuple(SIZES)


class Trajectories(NamedTuple):
    """Simulated trajectories of n particles.

    positions (n, K + 1, 2) and velocities (n, K + 1, 2) at the K + 1 recorded times; accelerations (n, K', 2);
    f_par, f_perp (n, K') the force magnitudes per step (the ForM regression targets); x0 = positions[:, 0],
    x1 = positions[:, -1] (the end points to reproduce).
    """

    positions: Array
    velocities: Array
    accelerations: Array
    f_par: Array
    f_perp: Array

    @property
    def x0(self) -> Array:
        return self.positions[:, 0]

    @property
    def x1(self) -> Array:
        return self.positions[:, -1]

    @property
    def v0(self) -> Array:
        return self.velocities[:, 0]


# ----------------------------------------------------------------------------------------------- initial states
def onedot_initial(key: Key, n: int) -> tuple[Array, Array]:
    """Onedot: x0 on the annulus 10 <= r <= 1e6 (r uniform), v0 = x0. Returns (x0, v0), each (n, 2)."""
    k_theta, k_r = jax.random.split(key)
    theta = jax.random.uniform(k_theta, (n,)) * 2 * math.pi
    r = jnp.clip(jax.random.uniform(k_r, (n,)) * (1e6 - 1e1) + 1e1, 1e1, 1e6)
    x0 = jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)], axis=1)
    return x0, x0


def halfmoons_initial(key: Key, n: int) -> tuple[Array, Array]:
    """Half-moons: x0 uniform on [-5, 5] x [-1e6, 1e6], v0 = (sign(y) 3e8 |sin(3.1415 y / 1e6)|, 0)."""
    kx, ky = jax.random.split(key)
    x = (jax.random.uniform(kx, (n,)) - 0.5) * 1e1
    y = (jax.random.uniform(ky, (n,)) - 0.5) * 2e6
    x0 = jnp.stack([x, y], axis=1)
    direction = jnp.where(y > 0, 1.0, -1.0)
    speed = 3e8 * jnp.abs(jnp.sin(PI_REF * y / 1e6))
    v0 = jnp.stack([speed * direction, jnp.zeros_like(y)], axis=1)
    return x0, v0


def spiral_vertices(components: int = 1000, turns: int = 2, scale: float = 2e4) -> Array:
    """Means of the spiral mixture: radius (5 theta + 10) * 2e4 at theta = 2 pi k / components. (turns*comp, 2)."""
    theta = jnp.arange(components * turns) * (2 * math.pi / components)
    r = (theta * 5 + 10) * scale
    return jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)], axis=1)


def spiral_initial(key: Key, n: int) -> tuple[Array, Array]:
    """Spiral: x0 from the uniform mixture of N(vertex, 0.3 I) over `spiral_vertices()`, v0 = 60 x0."""
    k_comp, k_noise = jax.random.split(key)
    means = spiral_vertices()
    comp = jax.random.randint(k_comp, (n,), 0, means.shape[0])
    x0 = means[comp] + math.sqrt(0.3) * jax.random.normal(k_noise, (n, 2))
    return x0, 60.0 * x0


INITIAL = {"onedot": onedot_initial, "halfmoons": halfmoons_initial, "spiral": spiral_initial}


# ----------------------------------------------------------------------------------------------- forces
def force_magnitudes(name: str, k: Array) -> tuple[Array, Array]:
    """(F_par(k), F_perp(k)) of dataset `name` at integer step(s) k (float arrays shaped like k)."""
    k = jnp.asarray(k, jnp.float32)
    if name == "onedot":
        return jnp.full_like(k, 1.5e8), jnp.full_like(k, 1.5e8)
    if name == "spiral":
        return jnp.full_like(k, 1.5e7), jnp.full_like(k, 1.5e8)
    if name == "halfmoons":
        return 1e7 * jnp.abs(jnp.sin(PI_REF * k / 10)), 7e8 * jnp.abs(jnp.sin(PI_REF * 8 * k / 10))
    raise ValueError(f"unknown ForM dataset {name!r}; known: {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------------------------- integrators
def reference_acceleration(f_par: Array, f_perp: Array, v: Array, c: float = C_LIGHT, m: float = MASS) -> Array:
    """The reference code's acceleration, unguarded: gamma = 1 / sqrt(1 - |v|^2/c^2), v_hat = v / (|v| + 1e-8).

    Kept verbatim in form (it gives Inf/NaN at |v| >= c, which `fm_jax.relativistic` avoids). f_par, f_perp:
    (n,) or (n, 1); v: (n, 2). Returns (n, 2).
    """
    f_par = jnp.reshape(f_par, (-1, 1)) if jnp.ndim(f_par) else f_par
    f_perp = jnp.reshape(f_perp, (-1, 1)) if jnp.ndim(f_perp) else f_perp
    speed_sq = jnp.sum(v**2, axis=1, keepdims=True)
    gamma = 1 / jnp.sqrt(1 - speed_sq / c**2)
    norm = jnp.linalg.norm(v, axis=1, keepdims=True)
    unit = v / (norm + 1e-8)
    unit_perp = jnp.concatenate([-v[:, 1:2], v[:, 0:1]], axis=1) / (norm + 1e-8)
    return f_par * unit / (m * gamma**3) + f_perp * unit_perp / (m * gamma)


def simulate_reference(name: str, x0: Array, v0: Array) -> Trajectories:
    """The official generator (9 Euler-velocity / trapezoid-position steps, float32), quirks included.

    Returns positions and velocities (n, 10, 2), accelerations (n, 10, 2) and force tables (n, 10).
    """
    n = x0.shape[0]

    def step(carry, k):
        x, v = carry
        f_par, f_perp = force_magnitudes(name, jnp.full((n,), k))
        a = reference_acceleration(f_par, f_perp, v)
        v_new = v + a * DT
        x_new = x + (v_new + v) * DT / 2
        return (x_new, v_new), (x_new, v_new, a)

    (_, v_last), (xs, vs, accs) = jax.lax.scan(step, (x0, v0), jnp.arange(NUM_STEPS - 1))
    if name == "halfmoons":
        # The reference evaluates the last acceleration at sin(3.1415 * t * 9/10) with the stale t = 8 = 7.2 pi'.
        arg = jnp.full((n,), PI_REF * 8 * 9 / 10)
        fp_last, fq_last = 1e7 * jnp.abs(jnp.sin(arg)), 7e8 * jnp.abs(jnp.sin(arg))
    else:
        fp_last, fq_last = force_magnitudes(name, jnp.full((n,), NUM_STEPS - 1))
    a_last = reference_acceleration(fp_last, fq_last, v_last)
    positions = jnp.concatenate([x0[:, None], jnp.swapaxes(xs, 0, 1)], axis=1)
    velocities = jnp.concatenate([v0[:, None], jnp.swapaxes(vs, 0, 1)], axis=1)
    accelerations = jnp.concatenate([jnp.swapaxes(accs, 0, 1), a_last[:, None]], axis=1)
    ks = jnp.arange(NUM_STEPS)
    f_par, f_perp = force_magnitudes(name, ks)
    return Trajectories(positions, velocities, accelerations, jnp.broadcast_to(f_par, (n, NUM_STEPS)),
                        jnp.broadcast_to(f_perp, (n, NUM_STEPS)))


def momentum_rollout(x0: Array, p0: Array, f_par: Array, f_perp: Array, c: float = C_LIGHT, m: float = MASS):
    """Roll (x, p) through K steps of `relativistic_step` with force magnitudes per step.

    The force at step k is f_par[:, k] v_hat_k + f_perp[:, k] v_hat_perp_k, directions from v_k = v(p_k).
    Args: x0, p0: (n, 2); f_par, f_perp: (n, K). Returns (positions (n, K+1, 2), momenta (n, K+1, 2)).
    """

    def step(carry, fk):
        x, p = carry
        fp, fq = fk
        v = rel.velocity_from_momentum(p, c, m)
        force = rel.force_from_magnitudes(fp, fq, v)
        x, p = rel.relativistic_step(x, p, force, DT, c, m)
        return (x, p), (x, p)

    _, (xs, ps) = jax.lax.scan(step, (x0, p0), (f_par.T, f_perp.T))
    positions = jnp.concatenate([x0[:, None], jnp.swapaxes(xs, 0, 1)], axis=1)
    momenta = jnp.concatenate([p0[:, None], jnp.swapaxes(ps, 0, 1)], axis=1)
    return positions, momenta


def simulate_momentum(name: str, x0: Array, v0: Array) -> Trajectories:
    """Our consistent generator: M = 10 momentum-space steps (|v| < c exactly).

    Returns positions, velocities (n, 11, 2); step-consistent accelerations (v_{k+1} - v_k) / dt (n, 10, 2);
    force tables (n, 10).
    """
    n = x0.shape[0]
    f_par, f_perp = force_magnitudes(name, jnp.arange(NUM_STEPS))
    f_par, f_perp = jnp.broadcast_to(f_par, (n, NUM_STEPS)), jnp.broadcast_to(f_perp, (n, NUM_STEPS))
    p0 = rel.momentum_from_velocity(v0, C_LIGHT, MASS)
    positions, momenta = momentum_rollout(x0, p0, f_par, f_perp)
    # Record the given v0 itself (not v(p0), equal up to rounding) so that samplers starting from the recorded
    # v0 rebuild the very same p0.
    velocities = rel.velocity_from_momentum(momenta, C_LIGHT, MASS).at[:, 0].set(v0)
    accelerations = (velocities[:, 1:] - velocities[:, :-1]) / DT
    return Trajectories(positions, velocities, accelerations, f_par, f_perp)


def make_dataset(name: str, key: Key, n: int, *, as_published: bool = False) -> Trajectories:
    """Draw n initial states of dataset `name` and simulate them (reference or consistent generator)."""
    if name not in INITIAL:
        raise ValueError(f"unknown ForM dataset {name!r}; known: {', '.join(DATASETS)}")
    x0, v0 = INITIAL[name](key, n)
    return simulate_reference(name, x0, v0) if as_published else simulate_momentum(name, x0, v0)


# ----------------------------------------------------------------------------------------------- a field generator
# A benchmark outside the paper's model class (experiments/form_fair.py): natural units c = m = T = 1, forces that
# depend on position and velocity, a fine integrator no sampler shares, and noisy observations.
FIELD_C = 1.0
FIELD_SPRING = 2.0  # F_spring = -k x
FIELD_MAGNETIC = 4.0  # F_mag = b (1 + 0.5 tanh(x_1)) rot90(v): perpendicular to v, magnitude proportional to |v|
FIELD_DRAG = 0.5  # F_drag = -beta v
FIELD_MAX_SPEED = 0.95
FIELD_DATASETS = ("moons", "spiral")


def field_force(x: Array, v: Array) -> Array:
    """The field generator's force F(x, v) = -k x + b (1 + tanh(x_1) / 2) rot90(v) - beta v, shape (..., 2).

    Position- and velocity-dependent (a spring, a position-dependent magnetic-like term and a drag); the paper's
    ForM model class (force magnitudes that depend on the step only) cannot represent it.
    """
    x, v = jnp.asarray(x), jnp.asarray(v)
    b = FIELD_MAGNETIC * (1.0 + 0.5 * jnp.tanh(x[..., 1:2]))
    return -FIELD_SPRING * x + b * rel.perpendicular_2d(v) - FIELD_DRAG * v


def _clip_speed(v: Array, max_speed: float) -> Array:
    speed = jnp.linalg.norm(v, axis=-1, keepdims=True)
    return v * jnp.minimum(1.0, max_speed / jnp.maximum(speed, 1e-12))


def field_initial(name: str, key: Key, n: int) -> tuple[Array, Array]:
    """Initial states of the field generator (natural units, positions of order 1, speeds below 0.95 c).

    moons: two interleaved half circles of radius 1 plus N(0, 0.1^2) noise, centred; spiral: r = 0.3 + 0.25
    theta, theta ~ U[0, 3 pi], plus N(0, 0.05^2). v0 = 0.5 rot90(x0) / (1 + |x0|) + N(0, 0.1^2 I), clipped to
    0.95 c: mostly a function of x0, plus a random part that no x0-only model can predict.
    Returns (x0, v0), each (n, 2).
    """
    k_a, k_b, k_n, k_v = jax.random.split(key, 4)
    if name == "moons":
        upper = jax.random.bernoulli(k_a, 0.5, (n,))
        theta = jax.random.uniform(k_b, (n,)) * math.pi
        xa = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=1)
        xb = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], axis=1)
        x0 = jnp.where(upper[:, None], xa, xb) - jnp.array([0.5, 0.25]) + 0.1 * jax.random.normal(k_n, (n, 2))
    elif name == "spiral":
        theta = jax.random.uniform(k_b, (n,)) * 3 * math.pi
        r = 0.3 + 0.25 * theta
        x0 = jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)], axis=1) + 0.05 * jax.random.normal(k_n, (n, 2))
    else:
        raise ValueError(f"unknown field dataset {name!r}; known: {', '.join(FIELD_DATASETS)}")
    norm = jnp.linalg.norm(x0, axis=1, keepdims=True)
    v0 = 0.5 * rel.perpendicular_2d(x0) / (1.0 + norm) + 0.1 * jax.random.normal(k_v, (n, 2))
    return x0, _clip_speed(v0, FIELD_MAX_SPEED * FIELD_C)


def simulate_field(x0: Array, v0: Array, *, num_steps: int = NUM_STEPS, substeps: int = 50,
                   c: float = FIELD_C, m: float = MASS) -> Trajectories:
    """Integrate `field_force` over unit time with `num_steps * substeps` momentum steps; record num_steps + 1 states.

    The fine steps (dt / substeps) make this a reference solution that no 10-step sampler reproduces by
    construction. Returns clean `Trajectories` (positions, velocities (n, K+1, 2); accelerations
    (v_{k+1} - v_k) / dt and the force magnitudes of the step-averaged force (p_{k+1} - p_k) / dt split along
    v_k, (n, K)).
    """
    dt = 1.0 / (num_steps * substeps)

    def fine(carry, _):
        x, p = carry
        force = field_force(x, rel.velocity_from_momentum(p, c, m))
        return rel.relativistic_step(x, p, force, dt, c, m), None

    def coarse(carry, _):
        carry, _ = jax.lax.scan(fine, carry, None, length=substeps)
        return carry, carry

    p0 = rel.momentum_from_velocity(v0, c, m)
    _, (xs, ps) = jax.lax.scan(coarse, (x0, p0), None, length=num_steps)
    positions = jnp.concatenate([x0[:, None], jnp.swapaxes(xs, 0, 1)], axis=1)
    momenta = jnp.concatenate([p0[:, None], jnp.swapaxes(ps, 0, 1)], axis=1)
    velocities = rel.velocity_from_momentum(momenta, c, m).at[:, 0].set(v0)
    return trajectories_from_states(positions, velocities, c=c, m=m)


def trajectories_from_states(positions: Array, velocities: Array, *, c: float = FIELD_C,
                             m: float = MASS) -> Trajectories:
    """Finite-difference regression targets from recorded states (n, K+1, 2) on a uniform grid over unit time.

    accelerations a_k = (v_{k+1} - v_k) / dt; the force of step k is (p_{k+1} - p_k) / dt with p = gamma m v,
    split into signed magnitudes along v_hat_k and rot90(v_hat_k) (the ForM targets). Returns `Trajectories`.
    """
    dt = 1.0 / (positions.shape[1] - 1)
    p = rel.momentum_from_velocity(velocities, c, m)
    force = (p[:, 1:] - p[:, :-1]) / dt
    v = velocities[:, :-1]
    vhat = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    f_par = jnp.sum(force * vhat, -1)
    f_perp = jnp.sum(force * rel.perpendicular_2d(vhat), -1)
    accelerations = (velocities[:, 1:] - velocities[:, :-1]) / dt
    return Trajectories(positions, velocities, accelerations, f_par, f_perp)


def observe(traj: Trajectories, key: Key, *, position_noise: float, velocity_noise: float,
            c: float = FIELD_C, m: float = MASS, max_speed: float = 0.995) -> Trajectories:
    """Noisy observations of clean trajectories: Gaussian noise on every recorded position and velocity (speeds
    clipped to `max_speed` c), with the regression targets recomputed from the noisy states."""
    kx, kv = jax.random.split(key)
    pos = traj.positions + position_noise * jax.random.normal(kx, traj.positions.shape)
    vel = _clip_speed(traj.velocities + velocity_noise * jax.random.normal(kv, traj.velocities.shape), max_speed * c)
    return trajectories_from_states(pos, vel, c=c, m=m)


__all__ = [
    "C_LIGHT", "DATASETS", "DT", "FIELD_C", "FIELD_DATASETS", "MASS", "NUM_STEPS", "SIZES", "Trajectories",
    "field_force", "field_initial", "force_magnitudes", "observe", "simulate_field", "trajectories_from_states",
    "halfmoons_initial", "make_dataset", "momentum_rollout", "onedot_initial", "reference_acceleration",
    "simulate_momentum", "simulate_reference", "spiral_initial", "spiral_vertices",
]
