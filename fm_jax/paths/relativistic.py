"""Second-order phase-space paths: relativistic Force Matching (ForM) and its Newtonian twin.

Generative use of Cao et al. 2025, "Force Matching with Relativistic Constraints" (arXiv 2502.08150): the
paper's own experiments simulate particles (see `fm_jax.data.relativistic_sims`); here the same mechanics drive
noise-to-data generation. The paper's conditional path was not available, so the choices below are ours.

State z = PhaseState(x, p) (position and momentum, each shaped like the data). Time t in [0, 1]: source at
t = 0, data at t = 1 (no clock map needed).

Source: x0 ~ N(0, sigma_x^2 I), p0 ~ N(0, sigma_p^2 I) independently, and v0 = v(p0), the velocity of p0
(`velocity_from_momentum`, so |v0| < c). The momentum must be random: with p0 = 0 the state (x_t, p_t) at small
t pins down x1, the learned field is singular at t = 0 (p' ~ p / t) and every sample would follow the mean
force to the data mean.

Conditional trajectory (ours): the Newtonian uniformly accelerated motion from (x0, v0) that lands on x1 at t = 1,
    x_t = x0 + t v0 + t^2 (x1 - x0 - v0),    dx_t/dt = (1 - 2t) v0 + 2t (x1 - x0),
with momentum p_t = gamma(dx_t/dt) m dx_t/dt and force target F_t = dp_t/dt by `jax.jvp` (nested: the velocity
itself is a jvp of x_t). In the limit c -> infinity the target is the constant force 2 m (x1 - x0 - v0), the
second-order analogue of Cond-OT's constant velocity.

The speed of light c, relative to the data scale: the trajectory's speed is at most |v0| + 2 |x1 - x0|, and a
pair can be joined at speed < c in unit time only if |x1 - x0| < c. For the toy data (scale ~2, sigma_x =
sigma_p = 1) we take c = 16 by default: in 2e5 draws per toy dataset no conditional trajectory reaches c (with
c = 12, 0.02-0.1 % do; with c = 10, 0.4-1.3 %). Typical speeds are ~c / 3 (gamma ~1.05, up to ~2 in the
tails): the training paths are mildly relativistic, and the bound is the safety net of sampling. A pair
whose trajectory would reach c (|x1 - x0| >~ c / 2) keeps its exact position path, so `readout` at t = 1 is
still x1, but its momentum and force are those of the velocity scaled down to max_beta c (0.999 c; gamma <= 22),
finite; `superluminal_fraction` measures how often that happens.

Sampling: `vector_field(F, z, t) = (v(p), F)`; the position moves with v(p) = p / (m gamma), so |dx/dt| < c for
ANY predicted force (finite or huge), for every solver step. The model predicts the force, an array shaped
like x. Each vector along the trailing `event_ndim` axes is one particle (default 1: rows of the data are
particles; use event_ndim=3 for (C, H, W) images).

`NewtonianSecondOrderPath` ("fm12", the first+second-order FM baseline in phase space): the same source and
trajectory with state (x, v), target the acceleration d^2 x_t / dt^2 and vector field (v, a): the velocity
(first-order quantity) is carried by the state and integrated from the second-order prediction. It is ForM's
c -> infinity limit with m = 1 (tested), and has no speed bound. The paper's baseline with two networks
(u1 velocity, u2 acceleration, update x + u1 dt + u2 dt^2 / 2) needs two outputs and a step size, which the
one-output path protocol does not carry; it is implemented in `experiments/form_paper.py`.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import relativistic as rel
from .._checks import check_positive, check_scalar_time, is_concrete
from .._typing import Array, Float, Key, Scalar
from .._util import as_float_array as _array
from .._util import scalar_jvp as _time_derivative
from .base import AbstractCouplablePath, PathSample


class PhaseState(NamedTuple):
    """A phase-space state: position `x` and momentum `p` (velocity for the Newtonian path), same shapes."""

    x: Array
    p: Array


def _trajectory_position(x0: Array, v0: Array, x1: Array, t: Scalar) -> Array:
    """x_t = x0 + t v0 + t^2 (x1 - x0 - v0): x(0) = x0, x'(0) = v0, x(1) = x1."""
    return x0 + t * v0 + t**2 * (x1 - x0 - v0)


class AbstractPhaseSpacePath(AbstractCouplablePath):
    """Common source and conditional trajectory of the two second-order paths (see the module docstring)."""

    sigma_x: eqx.AbstractVar[Array]
    sigma_p: eqx.AbstractVar[Array]
    event_ndim: eqx.AbstractVar[int]

    def _axes(self) -> tuple[int, ...]:
        return tuple(range(-self.event_ndim, 0))

    @abc.abstractmethod
    def _source_velocity(self, p0: Array) -> Array:
        """The velocity of a source momentum p0."""

    @abc.abstractmethod
    def _momentum(self, v: Array) -> Array:
        """The momentum of a velocity v."""

    @abc.abstractmethod
    def _velocity(self, p: Array) -> Array:
        """The velocity of a momentum p."""

    def sample_source(self, key: Key, shape: tuple[int, ...]) -> PhaseState:
        kx, kp = jax.random.split(key)
        x0 = self.sigma_x * jax.random.normal(kx, shape)
        p0 = self.sigma_p * jax.random.normal(kp, shape)
        return PhaseState(x0, p0)

    def conditional_state(self, z0: PhaseState, x1: Array, t: Scalar) -> tuple[PhaseState, Array]:
        """The conditional state z_t and target given a source state z0 = (x0, p0) and data x1.

        Returns (PhaseState(x_t, p_t), target) with target = dp_t/dt by a nested `jax.jvp`.
        """
        x0, p0 = z0
        v0 = self._source_velocity(p0)

        def momentum(s):
            _, v = _time_derivative(lambda r: _trajectory_position(x0, v0, x1, r), s)
            return self._momentum(v)

        x_t = _trajectory_position(x0, v0, x1, t)
        p_t, target = _time_derivative(momentum, t)
        return PhaseState(x_t, p_t), target

    def sample_conditional(self, key: Key, x1: Float[Array, "*d"], t: Scalar) -> PathSample:
        t = check_scalar_time(t)
        return self.sample_conditional_given_source(key, self.sample_source(key, jnp.shape(x1)), x1, t)

    def sample_conditional_given_source(
        self, key: Key, z0: PhaseState, x1: Float[Array, "*d"], t: Scalar
    ) -> PathSample:
        del key  # the trajectory is deterministic given the source state (x0, p0) and x1
        t = check_scalar_time(t)
        if jnp.shape(z0.x) != jnp.shape(x1) or jnp.shape(z0.p) != jnp.shape(x1):
            raise ValueError(
                f"source state has shapes ({jnp.shape(z0.x)}, {jnp.shape(z0.p)}) but x1 has {jnp.shape(x1)}; "
                "both must match x1"
            )
        dtype = jnp.result_type(x1, t)
        z0 = PhaseState(z0.x.astype(dtype), z0.p.astype(dtype))
        z_t, target = self.conditional_state(z0, x1.astype(dtype), t.astype(dtype))
        return PathSample(z_t, target)

    def vector_field(self, prediction: Array, z: PhaseState, t: Scalar) -> PhaseState:
        del t
        x, p = z
        return PhaseState(self._velocity(p).astype(jnp.result_type(x)), prediction.astype(jnp.result_type(p)))

    def readout(self, z: PhaseState) -> Array:
        return z[0]


class ForcePath(AbstractPhaseSpacePath):
    """Relativistic Force Matching path in phase space (x, p): the model predicts the force dp/dt.

    Conditional trajectory x_t = x0 + t v0 + t^2 (x1 - x0 - v0), p_t = gamma m dx_t/dt, target F_t = dp_t/dt
    (`jax.jvp`); vector field (dx/dt, dp/dt) = (p / (m gamma), F) with |dx/dt| < c for any F. See the module
    docstring for the choices (source, trajectory, c relative to the data scale).

    Args:
        c: speed of light (default 16, for data of scale ~2 and sigma_x = sigma_p = 1).
        m: rest mass. sigma_x, sigma_p: source scales of position and momentum.
        max_beta: conditional speeds above max_beta c are scaled down to it (finite targets for the rare pairs
            that cannot be joined below c; see `superluminal_fraction`).
        event_ndim: number of trailing axes forming one particle's vector (static).

    Example:
        >>> path = ForcePath()
        >>> zt, force = jax.vmap(path.sample_conditional)(keys, x1, t)   # zt = PhaseState(x (B, d), p (B, d))
    """

    c: Array = eqx.field(converter=_array, default=16.0)
    m: Array = eqx.field(converter=_array, default=1.0)
    sigma_x: Array = eqx.field(converter=_array, default=1.0)
    sigma_p: Array = eqx.field(converter=_array, default=1.0)
    max_beta: Array = eqx.field(converter=_array, default=0.999)
    event_ndim: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_positive(self.c, "ForcePath c (speed of light)")
        if is_concrete(self.max_beta) and not 0.0 < float(self.max_beta) < 1.0:
            raise ValueError(f"ForcePath max_beta must lie in (0, 1), got {float(self.max_beta)}")
        check_positive(self.m, "ForcePath m (rest mass)")
        check_positive(self.sigma_x, "ForcePath sigma_x")
        check_positive(self.sigma_p, "ForcePath sigma_p")
        if self.event_ndim < 1:
            raise ValueError(f"ForcePath event_ndim must be >= 1, got {self.event_ndim}")

    def _source_velocity(self, p0):
        return self._velocity(p0)

    def _momentum(self, v):
        # Conditional speeds at or beyond max_beta c (rare pairs that cannot be joined below c) are scaled down
        # to max_beta c, so their momentum and force target stay finite (gamma <= 1 / sqrt(1 - max_beta^2)).
        axes = self._axes()
        s2 = jnp.sum(v * v, axis=axes, keepdims=True)
        limit = self.max_beta * self.c
        over = s2 > limit**2
        speed = jnp.sqrt(jnp.where(over, s2, jnp.ones_like(s2)))
        v = jnp.where(over, v * (limit / speed), v)
        return rel.momentum_from_velocity(v, self.c, self.m, axis=axes)

    def _velocity(self, p):
        return rel.velocity_from_momentum(p, self.c, self.m, axis=self._axes())

    def force_closed_form(self, z0: PhaseState, x1: Array, t: Scalar) -> Array:
        """dp/dt in closed form, F = m gamma (a + gamma^2 (beta . a) beta), beta = v / c (tests compare the jvp).

        Args: z0 = (x0, p0), x1: (*d), t: scalar. Returns F: (*d).
        """
        x0, p0 = z0
        v0 = self._source_velocity(p0)
        v = (1.0 - 2.0 * t) * v0 + 2.0 * t * (x1 - x0)
        a = 2.0 * (x1 - x0 - v0)
        axes = self._axes()
        b = v / self.c
        g = jnp.expand_dims(rel.lorentz_factor(v, self.c, axis=axes), axes)
        ba = jnp.sum(b * a, axis=axes, keepdims=True)
        return self.m * g * (a + g**2 * ba * b)

    def superluminal_fraction(self, key: Key, x1: Array) -> Array:
        """Fraction of (source draw, data point) pairs whose conditional speed reaches max_beta c on [0, 1].

        The speed (1 - 2t) v0 + 2t (x1 - x0) is affine in t, its norm convex, so its maximum over [0, 1] is at an end:
        max(|v0|, |2 (x1 - x0) - v0|), and |v0| < c always.
        Args: key; x1: a batch (B, *d). Returns a scalar in [0, 1].
        """
        keys = jax.random.split(key, x1.shape[0])
        z0 = jax.vmap(lambda k: self.sample_source(k, x1.shape[1:]))(keys)
        v0 = jax.vmap(self._source_velocity)(z0.p)
        v_end = 2.0 * (x1 - z0.x) - v0
        axes = tuple(range(-self.event_ndim, 0))
        speed = jnp.sqrt(jnp.sum(v_end**2, axis=axes))
        per_example = jnp.max(speed.reshape(speed.shape[0], -1), axis=-1)
        return jnp.mean(per_example >= self.max_beta * self.c)


class NewtonianSecondOrderPath(AbstractPhaseSpacePath):
    """First+second-order (velocity + acceleration) FM in phase space (x, v): the model predicts d^2x/dt^2.

    Same source (v0 ~ N(0, sigma_v^2 I)) and trajectory as `ForcePath` with c = infinity and m = 1:
    x_t = x0 + t v0 + t^2 (x1 - x0 - v0), state (x_t, v_t = dx_t/dt), target a_t = dv_t/dt = 2 (x1 - x0 - v0)
    (`jax.jvp`); vector field (v, a). No speed bound.

    Args:
        sigma_x, sigma_v: source scales of position and velocity. event_ndim: as in `ForcePath` (static).
    """

    sigma_x: Array = eqx.field(converter=_array, default=1.0)
    sigma_p: Array = eqx.field(converter=_array, default=1.0)
    event_ndim: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_positive(self.sigma_x, "NewtonianSecondOrderPath sigma_x")
        check_positive(self.sigma_p, "NewtonianSecondOrderPath sigma_p (velocity scale)")
        if self.event_ndim < 1:
            raise ValueError(f"NewtonianSecondOrderPath event_ndim must be >= 1, got {self.event_ndim}")

    def _source_velocity(self, p0):
        return p0

    def _momentum(self, v):
        return v

    def _velocity(self, p):
        return p


__all__ = ["AbstractPhaseSpacePath", "ForcePath", "NewtonianSecondOrderPath", "PhaseState"]
