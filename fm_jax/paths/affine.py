"""Affine Gaussian paths x_t = alpha(t) x1 + sigma(t) x0, x0 ~ N(0, I), and their schedules.

Schedules are small frozen modules with `alpha(t)` and `sigma(t)`; their time derivatives come from `jax.jvp`
unless a closed form is written (tests compare the two). `snr_inverse` is closed-form for CondOT, VP, VE, Cosine,
Polynomial and LinearVP; any other schedule (e.g. the kinetic-optimal one) inverts by bisection with an
implicit-function derivative, so `schedule_transform`'s time map differentiates correctly either way.
All follow our convention: noise at t = 0, data at t = 1. Schedules that only approach the ends (VP reaches
alpha(0) = exp(-(beta_min + beta_max)/4) ~ 0.007; VE keeps sigma(1) = sigma_min) say so in their docstrings;
`AffinePath.sample_source` draws N(0, sigma(0)^2 I).

Prediction conversions (x is the state, u the velocity, x1 the data prediction, eps the noise x0):
    u   = alpha' x1 + sigma' eps,      x = alpha x1 + sigma eps,
    x1  = (sigma u - sigma' x) / (sigma alpha' - sigma' alpha),
    eps = (alpha u - alpha' x) / (alpha sigma' - alpha' sigma),
    score(x) = -E[eps | x] / sigma.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_positive, is_concrete
from .._typing import Array, Float, Key, Scalar
from .._util import as_float_array as _array
from .base import AbstractInterpolantPath, AbstractSignalToNoise, AbstractSourceDensity


class AbstractSchedule(eqx.Module):
    """A pair (alpha(t), sigma(t)) with alpha(1) = 1, sigma(1) ~ 0 and alpha(0) ~ 0 (noise at t = 0)."""

    @abc.abstractmethod
    def alpha(self, t: Scalar) -> Scalar:
        """Signal coefficient alpha(t)."""

    @abc.abstractmethod
    def sigma(self, t: Scalar) -> Scalar:
        """Noise coefficient sigma(t)."""

    def d_alpha(self, t: Scalar) -> Scalar:
        """d alpha / dt (by `jax.jvp`)."""
        t = jnp.asarray(t)
        return jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))[1]

    def d_sigma(self, t: Scalar) -> Scalar:
        """d sigma / dt (by `jax.jvp`)."""
        t = jnp.asarray(t)
        return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))[1]

    def snr(self, t: Scalar) -> Scalar:
        """Signal-to-noise ratio alpha(t) / sigma(t) (increasing in t for every schedule here)."""
        return self.alpha(t) / self.sigma(t)

    def snr_inverse(self, snr: Scalar) -> Scalar:
        """The t with snr(t) = `snr`: bisection on [0, 1] with an implicit-function derivative.

        Schedules with a closed-form inverse override this. The bisection's own derivative would be zero, so the
        jvp is set by the implicit function theorem: d t = (d snr - ∂snr/∂θ dθ) / snr'(t) (θ: the schedule's
        hyper-parameters), which `schedule_transform` needs for its time map.
        """
        return _bisect_snr_inverse(self, jnp.asarray(snr, dtype=jnp.result_type(snr, float)))


@jax.custom_jvp
def _bisect_snr_inverse(schedule: AbstractSchedule, snr: Array) -> Array:
    """The t in [0, 1] with schedule.snr(t) = snr, by 60 bisection steps (exact to float precision)."""

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = schedule.snr(mid) < snr
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, body, (jnp.zeros_like(snr), jnp.ones_like(snr)))
    return 0.5 * (lo + hi)


@_bisect_snr_inverse.defjvp
def _bisect_snr_inverse_jvp(primals, tangents):
    schedule, snr = primals
    d_schedule, d_snr = tangents
    t = _bisect_snr_inverse(schedule, snr)
    # snr(t(s, θ); θ) = s  =>  snr'(t) dt + ∂snr/∂θ dθ = ds.
    slope = jax.jvp(schedule.snr, (t,), (jnp.ones_like(t),))[1]
    d_snr_param = jax.jvp(lambda sch: sch.snr(t), (schedule,), (d_schedule,))[1]
    return t, (d_snr - d_snr_param) / slope


class CondOT(AbstractSchedule):
    """Conditional optimal transport: alpha = t, sigma = 1 - (1 - sigma_min) t (Lipman et al. 2023, Eq. 20)."""

    sigma_min: Array = eqx.field(converter=_array, default=0.0)

    def __check_init__(self):
        if is_concrete(self.sigma_min) and not 0.0 <= float(self.sigma_min) < 1.0:
            raise ValueError(f"CondOT sigma_min must lie in [0, 1), got {float(self.sigma_min)}")

    def alpha(self, t):
        return jnp.asarray(t)

    def sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return jnp.ones_like(jnp.asarray(t))

    def d_sigma(self, t):
        return -(1.0 - self.sigma_min) * jnp.ones_like(jnp.asarray(t))

    def snr_inverse(self, snr):
        # snr = t / (1 - (1 - sigma_min) t)  =>  t = snr / (1 + (1 - sigma_min) snr)
        return snr / (1.0 + (1.0 - self.sigma_min) * snr)


class VP(AbstractSchedule):
    """Variance-preserving (DDPM / score-SDE linear beta) schedule in our time, s = 1 - t.

    alpha(t) = exp(-s^2 (beta_max - beta_min)/4 - s beta_min/2), sigma = sqrt(1 - alpha^2)
    (Song et al. 2021, VP SDE with beta(s) = beta_min + s (beta_max - beta_min)), with the SDE clock
    s = s_min + (1 - s_min)(1 - t). sigma ~ sqrt(beta_min s) has an infinite slope at s = 0, so, as score-SDE
    does, the clock stops at s_min = 1e-5: sigma(1) ~ 1e-3 and the velocity stays finite at t = 1.
    alpha(0) = exp(-(beta_max + beta_min)/4) ~ 0.0066 is small, not zero.
    """

    beta_min: Array = eqx.field(converter=_array, default=0.1)
    beta_max: Array = eqx.field(converter=_array, default=20.0)
    s_min: Array = eqx.field(converter=_array, default=1e-5)

    def __check_init__(self):
        check_positive(self.beta_min, "VP beta_min")
        check_positive(self.beta_max, "VP beta_max")
        check_positive(self.s_min, "VP s_min")

    def _log_alpha(self, t):
        s = self.s_min + (1.0 - self.s_min) * (1.0 - t)
        return -0.25 * s**2 * (self.beta_max - self.beta_min) - 0.5 * s * self.beta_min

    def alpha(self, t):
        return jnp.exp(self._log_alpha(t))

    def sigma(self, t):
        # -expm1(2 log alpha) = 1 - alpha^2 without cancellation near t = 1.
        return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(t)))

    def snr_inverse(self, snr):
        # alpha^2 = snr^2 / (1 + snr^2)  =>  log alpha = L = -log1p(snr^-2) / 2 < 0, and the clock s solves
        # (beta_max - beta_min)/4 s^2 + beta_min/2 s + L = 0; the root is written without cancellation.
        log_alpha = -0.5 * jnp.log1p(1.0 / jnp.asarray(snr) ** 2)
        half_b = 0.5 * self.beta_min
        s = -2.0 * log_alpha / (half_b + jnp.sqrt(half_b**2 - (self.beta_max - self.beta_min) * log_alpha))
        return 1.0 - (s - self.s_min) / (1.0 - self.s_min)


class VE(AbstractSchedule):
    """Variance-exploding schedule: alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^(1 - t).

    Song et al. 2021 (NCSN / VE SDE) in our time. The source is N(0, sigma_max^2 I); sigma(1) = sigma_min > 0.
    """

    sigma_min: Array = eqx.field(converter=_array, default=0.01)
    sigma_max: Array = eqx.field(converter=_array, default=50.0)

    def __check_init__(self):
        check_positive(self.sigma_min, "VE sigma_min")
        check_positive(self.sigma_max, "VE sigma_max")
        if is_concrete((self.sigma_min, self.sigma_max)) and float(self.sigma_max) <= float(self.sigma_min):
            raise ValueError(f"VE needs sigma_max > sigma_min (noise must shrink towards the data), got sigma_min="
                             f"{float(self.sigma_min)}, sigma_max={float(self.sigma_max)}")

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=self.sigma_min.dtype))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (1.0 - t)

    def snr_inverse(self, snr):
        # snr = 1 / sigma  =>  1 - t = log(1 / (snr sigma_min)) / log(sigma_max / sigma_min).
        return 1.0 + jnp.log(jnp.asarray(snr) * self.sigma_min) / jnp.log(self.sigma_max / self.sigma_min)


class Cosine(AbstractSchedule):
    """Trigonometric schedule alpha = sin(pi t / 2), sigma = cos(pi t / 2) (stochastic interpolants / iDDPM)."""

    def alpha(self, t):
        return jnp.sin(0.5 * math.pi * t)

    def sigma(self, t):
        return jnp.cos(0.5 * math.pi * t)

    def d_alpha(self, t):
        return 0.5 * math.pi * jnp.cos(0.5 * math.pi * t)

    def d_sigma(self, t):
        return -0.5 * math.pi * jnp.sin(0.5 * math.pi * t)

    def snr_inverse(self, snr):
        # snr = tan(pi t / 2).
        return jnp.arctan(snr) * (2.0 / math.pi)


class Polynomial(AbstractSchedule):
    """Polynomial convex schedule alpha = t^n, sigma = 1 - t^n (n > 0; n = 1 is Cond-OT)."""

    n: Array = eqx.field(converter=_array, default=2.0)

    def __check_init__(self):
        check_positive(self.n, "Polynomial n")

    def alpha(self, t):
        return jnp.asarray(t) ** self.n

    def sigma(self, t):
        return 1.0 - jnp.asarray(t) ** self.n

    def snr_inverse(self, snr):
        # snr = t^n / (1 - t^n)  =>  t^n = snr / (1 + snr).
        snr = jnp.asarray(snr)
        return (snr / (1.0 + snr)) ** (1.0 / self.n)


class LinearVP(AbstractSchedule):
    """Linear variance-preserving schedule alpha = t, sigma = sqrt(1 - t^2) (flow_matching's `LinearVPScheduler`).

    alpha^2 + sigma^2 = 1, as for VP, with the Cond-OT signal coefficient. sigma'(t) = -t / sqrt(1 - t^2) is
    infinite at t = 1, so the velocity is unbounded there: sample on [0, 1 - eps] or use a grid that stops short.
    """

    def alpha(self, t):
        return jnp.asarray(t)

    def sigma(self, t):
        return jnp.sqrt(1.0 - jnp.asarray(t) ** 2)

    def d_alpha(self, t):
        return jnp.ones_like(jnp.asarray(t))

    def d_sigma(self, t):
        t = jnp.asarray(t)
        return -t / jnp.sqrt(1.0 - t**2)

    def snr_inverse(self, snr):
        # snr = t / sqrt(1 - t^2)  =>  t = snr / sqrt(1 + snr^2).
        snr = jnp.asarray(snr)
        return snr / jnp.sqrt(1.0 + snr**2)


class AffinePath(AbstractInterpolantPath, AbstractSourceDensity, AbstractSignalToNoise):
    """Gaussian affine path x_t = alpha(t) x1 + sigma(t) eps with eps ~ N(0, I).

    The source law is N(0, sigma(0)^2 I) and a source draw is x0 = sigma(0) eps, so in terms of the source draw
    x_t = alpha(t) x1 + (sigma(t) / sigma(0)) x0 and u_t = alpha'(t) x1 + (sigma'(t) / sigma(0)) x0 (closed form;
    tested against `jax.jvp` of `interpolate`). sigma(0) = 1 for every schedule but VE (sigma_max).

    Example:
        >>> path = AffinePath(CondOT())
        >>> zt, target = jax.vmap(path.sample_conditional)(keys, x1, t)   # keys: (B,), x1: (B, *d), t: (B,)
    """

    schedule: AbstractSchedule

    def sample_source(self, key: Key, shape: tuple[int, ...]) -> Array:
        return self.schedule.sigma(0.0) * jax.random.normal(key, shape)

    def source_log_prob(self, z0: Array) -> Scalar:
        s0 = self.schedule.sigma(0.0)
        d = z0.size
        return -0.5 * jnp.sum((z0 / s0) ** 2) - d * (jnp.log(s0) + 0.5 * math.log(2 * math.pi))

    def interpolate(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        return self.schedule.alpha(t) * x1 + (self.schedule.sigma(t) / self.schedule.sigma(0.0)) * x0

    def snr(self, t: Scalar) -> Scalar:
        return self.schedule.snr(t)

    def snr_inverse(self, snr: Scalar) -> Scalar:
        return self.schedule.snr_inverse(snr)

    def velocity(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        return self.schedule.d_alpha(t) * x1 + (self.schedule.d_sigma(t) / self.schedule.sigma(0.0)) * x0

    # Conversions between prediction types (all elementwise; x, u, x1, eps broadcast together).
    def velocity_to_x1(self, u: Array, x: Array, t: Scalar) -> Array:
        """x1 prediction from a velocity prediction u at state x."""
        a, s, da, ds = self._coefficients(t)
        return (s * u - ds * x) / (s * da - ds * a)

    def velocity_to_noise(self, u: Array, x: Array, t: Scalar) -> Array:
        """Noise (x0) prediction from a velocity prediction u at state x."""
        a, s, da, ds = self._coefficients(t)
        return (a * u - da * x) / (a * ds - da * s)

    def x1_to_velocity(self, x1: Array, x: Array, t: Scalar) -> Array:
        """Velocity from an x1 (data) prediction at state x."""
        a, s, da, ds = self._coefficients(t)
        return da * x1 + ds * (x - a * x1) / s

    def noise_to_velocity(self, eps: Array, x: Array, t: Scalar) -> Array:
        """Velocity from a noise prediction at state x."""
        a, s, da, ds = self._coefficients(t)
        return da * (x - s * eps) / a + ds * eps

    def x1_to_noise(self, x1: Array, x: Array, t: Scalar) -> Array:
        """Noise prediction from an x1 prediction: eps = (x - alpha x1) / sigma."""
        a, s, _, _ = self._coefficients(t)
        return (x - a * x1) / s

    def noise_to_x1(self, eps: Array, x: Array, t: Scalar) -> Array:
        """x1 prediction from a noise prediction: x1 = (x - sigma eps) / alpha."""
        a, s, _, _ = self._coefficients(t)
        return (x - s * eps) / a

    def noise_to_score(self, eps: Array, x: Array, t: Scalar) -> Array:
        """Score of p_t from a noise prediction: grad log p_t(x) = -eps / sigma."""
        del x
        return -eps / self.schedule.sigma(t)

    def _coefficients(self, t):
        sch = self.schedule
        return sch.alpha(t), sch.sigma(t), sch.d_alpha(t), sch.d_sigma(t)


def schedule_transform(velocity_fn, trained: AbstractSchedule, target: AbstractSchedule):
    """Sample a model trained under schedule `trained` along schedule `target` (same Gaussian source).

    Both paths pass through the same marginals up to scale: x̄_r = s_r x_{t_r}, with t_r = snr_trained^{-1}
    (snr_target(r)) and s_r = sigma_target(r) / sigma_trained(t_r). The transformed velocity is
        ū_r(x̄) = (ṡ_r / s_r) x̄ + s_r ṫ_r u_{t_r}(x̄ / s_r)
    (Lipman et al. 2024, "Flow Matching Guide and Code", §4.8). `ṫ_r, ṡ_r` come from `jax.jvp` through
    `trained.snr_inverse` (closed form, or the implicit-function derivative of the bisection).

    Args:
        velocity_fn: `velocity_fn(x, t) -> u` of the trained model (x: (*d) or batched, t scalar).
        trained, target: schedules.
    Returns:
        `new_velocity_fn(x, r)` for the target schedule.
    """

    def time_and_scale(r):
        t_r = trained.snr_inverse(target.snr(r))
        return t_r, target.sigma(r) / trained.sigma(t_r)

    def new_velocity_fn(x, r):
        r = jnp.asarray(r)
        (t_r, s_r), (dt_r, ds_r) = jax.jvp(time_and_scale, (r,), (jnp.ones_like(r),))
        return (ds_r / s_r) * x + s_r * dt_r * velocity_fn(x / s_r, t_r)

    return new_velocity_fn


def gaussian_marginal_velocity(
    schedule: AbstractSchedule, mean: Array, cov: Array, x: Array, t: Scalar
) -> Array:
    """Exact marginal velocity u_t(x) = E[u_t(x | x1) | x_t = x] for Gaussian data N(mean, cov).

    With x_t ~ N(alpha m, alpha^2 C + sigma^2 I) and r = x - alpha m:
        E[x1 | x] = m + alpha C (alpha^2 C + sigma^2 I)^{-1} r,   E[x0 | x] = sigma (alpha^2 C + sigma^2 I)^{-1} r,
        u = alpha' E[x1 | x] + sigma' E[x0 | x].
    Args: mean (d,), cov (d, d), x (d,), scalar t. Returns (d,).
    """
    a, s = schedule.alpha(t), schedule.sigma(t)
    da, ds = schedule.d_alpha(t), schedule.d_sigma(t)
    d = mean.shape[-1]
    sig_t = a**2 * cov + s**2 * jnp.eye(d, dtype=cov.dtype)
    w = jnp.linalg.solve(sig_t, x - a * mean)
    return da * (mean + a * cov @ w) + ds * s * w


__all__ = [
    "AbstractSchedule",
    "AffinePath",
    "CondOT",
    "Cosine",
    "LinearVP",
    "Polynomial",
    "VE",
    "VP",
    "gaussian_marginal_velocity",
    "schedule_transform",
]
