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
e^{-a g(T)} per coordinate; not a Gaussian).

Given a source draw (couplings): `sample_conditional_given_source(key, z0, x1, t)` samples the Kac *bridge*,
the Kac process conditioned on its end value K_{g(T)} = y := z0 - f(T) x1 (clipped to the reachable [-c g(T),
c g(T)]; y = z0 for the linear signal), and returns the pathwise target -T [f'(s) x1 + g'(s) V_{g(s)}] with V
the bridge's own velocity (+-c). The bridge is exact: with first direction B and N ~ Poisson(a S) switches
(S = g(T)), the time R = (S + y / c) / 2 spent moving right fixes y, and given (N = n, B) the right and left
spacings are R Dirichlet(1, ..., 1) and (S - R) Dirichlet(1, ..., 1), independent; R / S given (n, B) is
Beta(n_R, n + 1 - n_R) with n_R right-moving spacings. So (n, B) is drawn from its posterior
P(n) Beta_pdf(R / S; n_R, n + 1 - n_R), the spacings from the two Dirichlet laws, and the path is read off at
g(s). The end values +-c S are the atoms (no switch; the bridge moves straight). The Poisson law is truncated at
`BRIDGE_MAX_SWITCHES` switches (mass beyond it < 1e-12 for a S <= 60). Drawing z0 from the source and then the
bridge reproduces the law of `sample_conditional` (tested); its target is pathwise, hence noisier than the
marginalised target of `sample_conditional`, which stays the default of the independent coupling.

Defaults a = 9, c = 3, T = 1 (c^2 / a = 1, per-coordinate prior
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
from .._typing import Array, Float, Key, Scalar
from .._util import as_float_array as _array
from .._util import scalar_derivative
from .base import AbstractCouplablePath, AbstractFirstOrderPath, PathSample


def _time_derivative(fn, s, T):
    return scalar_derivative(lambda u: fn(u, T), s)


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


BRIDGE_MAX_SWITCHES = 128


def _bridge_coordinate(key: Key, y: Array, r: Array, S: Array, a: Array, c: Array) -> tuple[Array, Array]:
    """(K_r, V_r) of one 1-D Kac process (rate a, speed c, K_0 = 0) conditioned on K_S = y, for 0 <= r <= S."""
    n_max = BRIDGE_MAX_SWITCHES
    dtype = jnp.result_type(y)
    k_n, k_right, k_left = jax.random.split(key, 3)
    cs = c * S
    y = jnp.clip(y, -cs, cs)
    u = 0.5 * (1.0 + y / cs)  # fraction of [0, S] spent moving right
    tiny = 16 * jnp.finfo(dtype).eps
    atom = (u <= tiny) | (u >= 1.0 - tiny)
    u_in = jnp.clip(u, tiny, 1.0 - tiny)
    # Posterior of (n, first direction b) given R = u S: P(n) Beta_pdf(u; n_R, n + 1 - n_R), n = 1..n_max.
    n = jnp.arange(1, n_max + 1, dtype=dtype)
    n_b = jnp.floor(n / 2) + 1  # spacings moving in the first direction
    n_right = jnp.concatenate([n_b, n + 1 - n_b])  # b = +1 (first half), b = -1 (second half)
    n_all = jnp.concatenate([n, n])
    n_left = n_all + 1 - n_right
    log_beta = (
        (n_right - 1) * jnp.log(u_in) + (n_left - 1) * jnp.log1p(-u_in)
        - (jax.scipy.special.gammaln(n_right) + jax.scipy.special.gammaln(n_left)
           - jax.scipy.special.gammaln(n_all + 1))
    )
    log_w = n_all * jnp.log(a * S) - jax.scipy.special.gammaln(n_all + 1) + log_beta
    pick = jax.random.categorical(k_n, log_w)
    n_pick = jnp.where(atom, 0.0, n_all[pick])
    b = jnp.where(atom, jnp.where(u >= 0.5, 1.0, -1.0), jnp.where(pick < n_max, 1.0, -1.0))
    nr = jnp.where(atom, jnp.where(b > 0, 1.0, 0.0), n_right[pick])
    nl = n_pick + 1 - nr
    # Flat Dirichlet spacings as normalised exponentials, masked to the drawn counts.
    slots = jnp.arange(n_max + 1, dtype=dtype)
    e_r = jnp.where(slots < nr, jax.random.exponential(k_right, (n_max + 1,), dtype), 0.0)
    e_l = jnp.where(slots < nl, jax.random.exponential(k_left, (n_max + 1,), dtype), 0.0)
    right = u * S * e_r / jnp.maximum(jnp.sum(e_r), jnp.finfo(dtype).tiny)
    left = (1.0 - u) * S * e_l / jnp.maximum(jnp.sum(e_l), jnp.finfo(dtype).tiny)
    # Spacing k moves in direction b (-1)^k and is the (k // 2)-th spacing of its direction.
    k = jnp.arange(n_max + 1)
    direction = b * jnp.where(k % 2 == 0, 1.0, -1.0).astype(dtype)
    length = jnp.where(k <= n_pick, jnp.where(direction > 0, right[k // 2], left[k // 2]), 0.0)
    start = jnp.cumsum(length) - length
    position = c * jnp.sum(direction * jnp.clip(r - start, 0.0, length))
    current = jnp.sum(jnp.where(start <= r, 1, 0)) - 1  # the last spacing started by r
    current = jnp.clip(jnp.minimum(current, n_pick.astype(current.dtype)), 0, n_max)
    return position, c * direction[current]


class KacPath(AbstractFirstOrderPath, AbstractCouplablePath):
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

    def sample_conditional(self, key: Key, x1: Float[Array, "*d"], t: Scalar) -> PathSample:
        t = check_scalar_time(t)
        dtype = jnp.result_type(x1, t)
        s = self.kac_time(t)
        noise = kac.sample(key, self.clock.g(s, self.T), self.a, self.c, jnp.shape(x1)).astype(dtype)
        z = (self.signal.f(s, self.T) * x1 + noise).astype(dtype)
        # The sampled displacement is used as is (not recovered as z - f x1), so atoms get exactly +-c.
        return PathSample(z, self._target(x1, noise, s).astype(dtype))

    def sample_conditional_given_source(
        self, key: Key, z0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar
    ) -> PathSample:
        """A draw of the Kac bridge from the source state z0 to x1 and its pathwise target (module docstring)."""
        t = check_scalar_time(t)
        if jnp.shape(z0) != jnp.shape(x1):
            raise ValueError(f"source draw z0 has shape {jnp.shape(z0)} but x1 has {jnp.shape(x1)}; they must match")
        dtype = jnp.result_type(x1, t)
        s = self.kac_time(t)
        S = self.clock.g(self.T, self.T)
        x1 = x1.astype(dtype)
        y = jnp.ravel(z0.astype(dtype) - self.signal.f(self.T, self.T) * x1)
        keys = jax.random.split(key, y.shape[0])
        args = (jnp.asarray(v, dtype) for v in (self.clock.g(s, self.T), S, self.a, self.c))
        r, S, a, c = args
        k_r, v_r = jax.vmap(lambda kk, yy: _bridge_coordinate(kk, yy, r, S, a, c))(keys, y)
        z = self.signal.f(s, self.T) * x1 + k_r.reshape(jnp.shape(x1))
        target = -self.T * (self.signal.df(s, self.T) * x1 + self.clock.dg(s, self.T) * v_r.reshape(jnp.shape(x1)))
        return PathSample(z.astype(dtype), target.astype(dtype))

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
