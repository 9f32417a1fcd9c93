"""Kac (telegrapher) flow paths: data plus independent 1-D Kac processes per coordinate.

Duong, Chemseddine, Friz, Steidl, "Telegrapher's Generative Model via Kac Flows" (arXiv 2506.20641). In the
paper's clock s in [0, T] (data at s = 0) the forward path is

    x_s = f(s) x1 + K_{g(s)},        K = (K^1, ..., K^d) independent 1-D Kac processes (rate a, speed c),

with a signal schedule f (f(0) = 1, f(T) = 0) and a clock g (g(0) = 0), and the conditional velocity is

    dx_s/ds = f'(s) x1 + g'(s) v(g(s), x_s - f(s) x1),

with the 1-D Kac velocity `fm_jax.kac.velocity` applied to each coordinate. Our time runs the other way:
s = T (1 - t), so t = 0 is the Kac prior and t = 1 the data, and ds/dt = -T gives the target

    u_t(z | x1) = -T [f'(s) x1 + g'(s) v(g(s), z - f(s) x1)],   s = T (1 - t).

The source law at t = 0 is the product of 1-D Kac laws at the final clock g(T) (atoms at +-c g(T) with mass
e^{-a g(T)} per coordinate; not a Gaussian). Defaults a = 9, c = 3, T = 1 (c^2 / a = 1, per-coordinate prior
variance 0.944), linear signal, identity clock, as in the reference code.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import kac
from .._checks import check_positive, check_scalar_time
from .._typing import Array, Key, Scalar
from .base import AbstractFirstOrderPath, PathSample


def _array(x) -> Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _time_derivative(fn, s, T):
    s = jnp.asarray(s)
    return jax.jvp(lambda u: fn(u, T), (s,), (jnp.ones_like(s),))[1]


class AbstractKacSignal(eqx.Module):
    """A signal schedule f(s) on the paper's clock s in [0, T]: f(0) = 1, decreasing (f(T) = 0 for an exact prior)."""

    @abc.abstractmethod
    def f(self, s: Scalar, T: Scalar) -> Scalar:
        """Signal coefficient f(s)."""

    def df(self, s: Scalar, T: Scalar) -> Scalar:
        """df/ds (by `jax.jvp`)."""
        return _time_derivative(self.f, s, T)


class LinearSignal(AbstractKacSignal):
    """f(s) = 1 - s / T (the reference code's default)."""

    def f(self, s, T):
        return 1.0 - s / T

    def df(self, s, T):
        return -jnp.ones_like(jnp.asarray(s)) / T


class ExponentialSignal(AbstractKacSignal):
    """f(s) = exp(-rate s). f(T) = e^{-rate T} is not 0: the prior is exact only when that is negligible."""

    rate: Array = eqx.field(converter=_array, default=1.0)

    def __check_init__(self):
        check_positive(self.rate, "ExponentialSignal rate")

    def f(self, s, T):
        del T
        return jnp.exp(-self.rate * s)

    def df(self, s, T):
        del T
        return -self.rate * jnp.exp(-self.rate * s)


class CosineSignal(AbstractKacSignal):
    """f(s) = cos(pi s / (2 T))."""

    def f(self, s, T):
        return jnp.cos(0.5 * math.pi * s / T)

    def df(self, s, T):
        return -0.5 * math.pi / T * jnp.sin(0.5 * math.pi * s / T)


class AbstractKacClock(eqx.Module):
    """A clock g(s) on [0, T] with g(0) = 0, non-decreasing: the Kac process is read at time g(s)."""

    @abc.abstractmethod
    def g(self, s: Scalar, T: Scalar) -> Scalar:
        """Kac time g(s)."""

    def dg(self, s: Scalar, T: Scalar) -> Scalar:
        """dg/ds (by `jax.jvp`)."""
        return _time_derivative(self.g, s, T)


class IdentityClock(AbstractKacClock):
    """g(s) = s (the reference code's default)."""

    def g(self, s, T):
        del T
        return jnp.asarray(s)

    def dg(self, s, T):
        del T
        return jnp.ones_like(jnp.asarray(s))


class QuadraticClock(AbstractKacClock):
    """g(s) = T (s / T)^2: the process starts slowly near the data."""

    def g(self, s, T):
        return T * (s / T) ** 2

    def dg(self, s, T):
        return 2.0 * s / T


class KacPath(AbstractFirstOrderPath):
    """Kac flow path z_t = f(s) x1 + K_{g(s)}, s = T (1 - t), with target -T [f' x1 + g' v(g, z - f x1)].

    See the module docstring for the equations. `a` (switching rate), `c` (speed) and `T` (final clock) are
    array-valued pytree leaves, so changing them never recompiles; `signal` and `clock` are modules.

    Example:
        >>> path = KacPath(a=25.0, c=2.0)
        >>> zt, target = jax.vmap(path.sample_conditional)(keys, x1, t)   # keys: (B,), x1: (B, *d), t: (B,)
    """

    a: Array = eqx.field(converter=_array, default=9.0)
    c: Array = eqx.field(converter=_array, default=3.0)
    T: Array = eqx.field(converter=_array, default=1.0)
    signal: AbstractKacSignal = LinearSignal()
    clock: AbstractKacClock = IdentityClock()

    def __check_init__(self):
        check_positive(self.a, "KacPath a (switching rate)")
        check_positive(self.c, "KacPath c (speed)")
        check_positive(self.T, "KacPath T (final clock)")

    def kac_time(self, t: Scalar) -> Scalar:
        """The paper's clock s = T (1 - t) for our time t; NaN for t outside [0, 1] (or NaN), so that a traced
        out-of-range time gives NaN samples and targets instead of a valid-looking draw at a mirrored clock."""
        t = jnp.asarray(t)
        return jnp.where((t >= 0.0) & (t <= 1.0), self.T * (1.0 - t), jnp.nan)

    def sample_source(self, key: Key, shape: tuple[int, ...]) -> Array:
        """Product of 1-D Kac laws at the final clock g(T) (exact draws, `fm_jax.kac.sample`)."""
        return kac.sample(key, self.clock.g(self.T, self.T), self.a, self.c, shape)

    def sample_conditional(self, key: Key, x1: Array, t: Scalar) -> PathSample:
        t = check_scalar_time(t)
        dtype = jnp.result_type(x1, t)
        s = self.kac_time(t)
        noise = kac.sample(key, self.clock.g(s, self.T), self.a, self.c, jnp.shape(x1)).astype(dtype)
        z = (self.signal.f(s, self.T) * x1 + noise).astype(dtype)
        # The sampled displacement is used as is (not recovered as z - f x1), so atoms get exactly +-c.
        return PathSample(z, self._target(x1, noise, s).astype(dtype))

    def conditional_velocity(self, z: Array, x1: Array, t: Scalar) -> Array:
        """u_t(z | x1) = -T [f'(s) x1 + g'(s) v(g(s), z - f(s) x1)] with s = T (1 - t); z, x1: (*d).

        A displacement within rounding of the cone |z - f x1| = c g(s) is put on the atom (speed exactly c): the
        sampler's z = f x1 + K is rounded, so z - f x1 recomputed can land one rounding step inside the cone,
        where the velocity is ~c a g / (a g + 2) instead of c. The atoms carry mass e^{-a g}, the band of width
        ~eps (|z| + |f x1| + c g) next to them a mass of order eps, so snapping is the right call there.
        """
        s = self.kac_time(t)
        fx1 = self.signal.f(s, self.T) * x1
        displacement = z - fx1
        edge = self.c * self.clock.g(s, self.T)  # = fl(c g): where `kac.sample` puts the atoms
        eps = jnp.finfo(jnp.result_type(displacement)).eps
        near_atom = jnp.abs(displacement) >= edge - 2.0 * eps * (jnp.abs(z) + jnp.abs(fx1) + edge)
        displacement = jnp.where(near_atom, jnp.sign(displacement) * edge, displacement)
        return self._target(x1, displacement, s)

    def _target(self, x1: Array, displacement: Array, s: Scalar) -> Array:
        g = self.clock.g(s, self.T)
        # Independent coordinates: the 1-D velocity mapped over the flattened coordinates.
        v = jax.vmap(lambda k: kac.velocity(g, k, self.a, self.c))(jnp.ravel(displacement))
        v = v.reshape(jnp.shape(displacement))
        return -self.T * (self.signal.df(s, self.T) * x1 + self.clock.dg(s, self.T) * v)


__all__ = [
    "AbstractKacClock",
    "AbstractKacSignal",
    "CosineSignal",
    "ExponentialSignal",
    "IdentityClock",
    "KacPath",
    "LinearSignal",
    "QuadraticClock",
]
