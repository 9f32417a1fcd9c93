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


__all__ = [
    "C_LIGHT", "DATASETS", "DT", "MASS", "NUM_STEPS", "SIZES", "Trajectories", "force_magnitudes",
    "halfmoons_initial", "make_dataset", "momentum_rollout", "onedot_initial", "reference_acceleration",
    "simulate_momentum", "simulate_reference", "spiral_initial", "spiral_vertices",
]
