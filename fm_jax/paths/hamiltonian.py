"""Hamiltonian generative flows (HGF; Holderrieth, Xu, Jaakkola, NeurIPS 2024) with the velocity marginalised.

The paper runs the PH-ODE dx/dtau = v, dv/dtau = F(x) forward from the data (x0 ~ pi at tau = 0) to a simple law
at tau = T, trains V(x, tau) ~ E[v_tau | x_tau = x] and samples by integrating dx/dtau = V backwards from T to 0.
Our time runs the other way (source at t = 0, data at t = 1), so every path here uses the clock

    tau(t) = T (1 - t)            (T = pi / (2 alpha) for the oscillation flow; the VE path uses tau = sigma(t))

and, because dtau/dt = -T, the regression target is dx/dt = -T v_tau (the sign flips under the time reversal).
State z = x (first-order paths); a model predicting the target u converts to the paper's HVP as phi = -u / T.
Data are `x1` (our name) = `x0` (the paper's name).

Paths:
- `OscillationHGFPath(alpha, sigma_v)`: F = -alpha^2 x, v0 ~ N(0, sigma_v^2 I); source N(0, (sigma_v/alpha)^2 I).
  In our time x_t = sin(pi t/2) x1 + cos(pi t/2) z0 with z0 = v0/alpha: the cosine (trigonometric) path with noise
  scale sigma_v/alpha, whatever alpha (alpha = sigma_v = 1 is exactly `AffinePath(Cosine())`, and TrigFlow).
- `ZeroForceHGFPath(sigma_min, sigma_max)`: F = 0, v0 ~ N(0, I) independent; x = x1 + tau v0 with
  tau = sigma(t) = sigma_min (sigma_max/sigma_min)^(1-t): exactly `AffinePath(VE(sigma_min, sigma_max))`.
- `CoupledZeroForceHGFPath(sigma_v)`: F = 0, v0 = eps - x1 with eps ~ N(0, sigma_v^2 I), tau = 1 - t:
  x_t = t x1 + (1 - t) eps, the Cond-OT flow-matching path (`AffinePath(CondOT())` for sigma_v = 1).
- `ForceFieldHGFPath(force, tau_max, sigma_v, source_std, n_steps)`: any force field, integrated by velocity
  Verlet (`fm_jax.hamiltonian.hamiltonian_flow`).
- `ReflectingBoxHGFPath(half_width, sigma_v, tau_max)`: F = 0 inside [-L, L]^d with elastic walls (the paper's
  "reflection HGF"); closed form by folding, source uniform on the box.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .. import hamiltonian as ham
from .._checks import check_positive, check_scalar_time, is_concrete
from .._typing import Array, Float, Key, Scalar
from .._util import as_float_array as _array
from .base import (
    AbstractFirstOrderPath,
    AbstractInterpolantPath,
    AbstractSignalToNoise,
    AbstractSourceDensity,
    PathSample,
)


def _gaussian_log_prob(z0: Array, std: Scalar) -> Scalar:
    return -0.5 * jnp.sum((z0 / std) ** 2) - z0.size * (jnp.log(std) + 0.5 * math.log(2 * math.pi))


class OscillationHGFPath(AbstractInterpolantPath, AbstractSourceDensity, AbstractSignalToNoise):
    """Oscillation HGF: harmonic force F = -alpha^2 x, independent velocities v0 ~ N(0, sigma_v^2 I).

    Paper clock tau = T (1 - t), T = pi / (2 alpha); with z0 = v0 / alpha the source draw,
        x_t = cos(alpha tau) x1 + sin(alpha tau) z0,
        u_t = dx/dt = -T v_tau = -T (-alpha sin(alpha tau) x1 + cos(alpha tau) alpha z0)   (papers.md §3.5).
    At t = 0, x = v0/alpha ~ N(0, (sigma_v/alpha)^2 I) exactly (the source); at t = 1, x = x1.

    Args:
        alpha: frequency > 0. sigma_v: initial velocity scale > 0.
    """

    alpha: Array = eqx.field(converter=_array, default=1.0)
    sigma_v: Array = eqx.field(converter=_array, default=1.0)

    def __check_init__(self):
        check_positive(self.alpha, "alpha (the oscillation frequency)")
        check_positive(self.sigma_v, "sigma_v (the initial velocity scale)")

    @property
    def tau_max(self) -> Scalar:
        """T = pi / (2 alpha), the paper-clock time of the source."""
        return 0.5 * math.pi / self.alpha

    def tau(self, t: Scalar) -> Scalar:
        """The paper's clock tau = T (1 - t)."""
        return self.tau_max * (1.0 - t)

    def sample_source(self, key: Key, shape: tuple[int, ...]) -> Array:
        return (self.sigma_v / self.alpha) * jax.random.normal(key, shape)

    def source_log_prob(self, z0: Array) -> Scalar:
        return _gaussian_log_prob(z0, self.sigma_v / self.alpha)

    def interpolate(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        x, _ = ham.oscillation_state(x1, self.alpha * x0, self.tau(t), self.alpha)
        return x

    def snr(self, t: Scalar) -> Scalar:
        """x_t = sin(pi t/2) x1 + cos(pi t/2) (sigma_v/alpha) eps: snr = tan(pi t/2) alpha / sigma_v."""
        return jnp.tan(0.5 * math.pi * jnp.asarray(t)) * self.alpha / self.sigma_v

    def snr_inverse(self, snr: Scalar) -> Scalar:
        return jnp.arctan(jnp.asarray(snr) * self.sigma_v / self.alpha) * (2.0 / math.pi)

    def velocity(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        _, v = ham.oscillation_state(x1, self.alpha * x0, self.tau(t), self.alpha)
        return -self.tau_max * v

    # Conversions between a model's target-space prediction u (= dx/dt) and denoiser / score, in our time t.
    def velocity_to_denoiser(self, u: Array, x: Array, t: Scalar) -> Array:
        """E[x1 | x_t = x] from a velocity prediction: D = cos(a tau) x - sin(a tau) phi / a with phi = -u / T."""
        return ham.oscillation_velocity_to_denoiser(-u / self.tau_max, x, self.tau(t), self.alpha)

    def denoiser_to_velocity(self, d: Array, x: Array, t: Scalar) -> Array:
        """Velocity from a denoiser: u = -T alpha (cos(a tau) x - D) / sin(a tau) (singular at t = 1)."""
        return -self.tau_max * ham.oscillation_denoiser_to_velocity(d, x, self.tau(t), self.alpha)

    def velocity_to_score(self, u: Array, x: Array, t: Scalar) -> Array:
        """grad log p_t(x) from a velocity prediction (Tweedie; singular at t = 1)."""
        return ham.oscillation_velocity_to_score(-u / self.tau_max, x, self.tau(t), self.alpha, self.sigma_v)

    def score_to_velocity(self, score: Array, x: Array, t: Scalar) -> Array:
        """Velocity from the score of p_t (singular at t = 0, where x carries no information on the data)."""
        return -self.tau_max * ham.oscillation_score_to_velocity(score, x, self.tau(t), self.alpha, self.sigma_v)


class ZeroForceHGFPath(AbstractInterpolantPath, AbstractSourceDensity):
    """Zero-force HGF with independent velocities: the VE / EDM diffusion path with sigma = tau.

    F = 0 and v0 ~ N(0, I) give x_tau = x1 + tau v0 (papers.md §3.4). Clock tau(t) = sigma_min
    (sigma_max / sigma_min)^(1 - t) (log-uniform noise levels, as the VE SDE), target u = tau'(t) v0 with
    tau' = -log(sigma_max/sigma_min) tau. The source draw is z0 = sigma_max v0, so the source law
    N(0, sigma_max^2 I) is exact only as sigma_max -> inf (as for any VE path); x at t = 1 is x1 + sigma_min v0.
    The HVP (paper velocity) is phi = u / tau'(t) = (x - D)/tau = -tau grad log p_t(x).
    """

    sigma_min: Array = eqx.field(converter=_array, default=0.01)
    sigma_max: Array = eqx.field(converter=_array, default=50.0)

    def __check_init__(self):
        check_positive(self.sigma_min, "ZeroForceHGFPath sigma_min")
        check_positive(self.sigma_max, "ZeroForceHGFPath sigma_max")
        if is_concrete((self.sigma_min, self.sigma_max)) and float(self.sigma_max) <= float(self.sigma_min):
            raise ValueError(
                f"ZeroForceHGFPath needs sigma_max > sigma_min, got {float(self.sigma_max)} <= {float(self.sigma_min)}"
            )

    def tau(self, t: Scalar) -> Scalar:
        """The paper's clock (= the VE noise level) tau = sigma_min (sigma_max / sigma_min)^(1 - t)."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (1.0 - t)

    def d_tau(self, t: Scalar) -> Scalar:
        """d tau / dt = -log(sigma_max / sigma_min) tau (closed form; tested against jax.jvp)."""
        return -jnp.log(self.sigma_max / self.sigma_min) * self.tau(t)

    def sample_source(self, key: Key, shape: tuple[int, ...]) -> Array:
        return self.sigma_max * jax.random.normal(key, shape)

    def source_log_prob(self, z0: Array) -> Scalar:
        return _gaussian_log_prob(z0, self.sigma_max)

    def interpolate(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        v0 = x0 / self.sigma_max
        x, _ = ham.oscillation_state(x1, v0, self.tau(t), 0.0)  # alpha = 0: the zero-force flow x1 + tau v0
        return x

    def velocity(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        del x1
        return self.d_tau(t) * x0 / self.sigma_max

    def velocity_to_denoiser(self, u: Array, x: Array, t: Scalar) -> Array:
        """E[x1 | x_t = x] = x - tau phi with phi = u / tau'(t)."""
        return ham.zero_force_velocity_to_denoiser(u / self.d_tau(t), x, self.tau(t))

    def denoiser_to_velocity(self, d: Array, x: Array, t: Scalar) -> Array:
        """u = tau'(t) (x - D) / tau."""
        return self.d_tau(t) * ham.zero_force_denoiser_to_velocity(d, x, self.tau(t))

    def velocity_to_score(self, u: Array, x: Array, t: Scalar) -> Array:
        """grad log p_t(x) = -phi / tau with phi = u / tau'(t)."""
        return ham.zero_force_velocity_to_score(u / self.d_tau(t), x, self.tau(t))

    def score_to_velocity(self, score: Array, x: Array, t: Scalar) -> Array:
        """u = -tau'(t) tau grad log p_t(x) (the EDM probability-flow ODE)."""
        return self.d_tau(t) * ham.zero_force_score_to_velocity(score, x, self.tau(t))


class CoupledZeroForceHGFPath(AbstractInterpolantPath, AbstractSourceDensity):
    """Zero-force HGF with coupled velocities v0 = eps - x1, eps ~ N(0, sigma_v^2 I): Cond-OT flow matching.

    Paper clock tau = 1 - t: x_tau = x1 + tau v0 = t x1 + (1 - t) eps; target u = -v0 = x1 - eps (papers.md §3.4).
    The source draw is eps itself (law N(0, sigma_v^2 I), exact).
    """

    sigma_v: Array = eqx.field(converter=_array, default=1.0)

    def __check_init__(self):
        check_positive(self.sigma_v, "sigma_v (the initial velocity scale)")

    def sample_source(self, key: Key, shape: tuple[int, ...]) -> Array:
        return self.sigma_v * jax.random.normal(key, shape)

    def source_log_prob(self, z0: Array) -> Scalar:
        return _gaussian_log_prob(z0, self.sigma_v)

    def interpolate(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        x, _ = ham.oscillation_state(x1, x0 - x1, 1.0 - t, 0.0)
        return x

    def velocity(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        del t
        return x1 - x0


def _as_force(force) -> ham.Force:
    """Make a force usable as a pytree field: keep equinox modules, split Flax NNX modules, wrap plain functions."""
    if isinstance(force, eqx.Module):
        return force
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        nnx = None
    if nnx is not None and isinstance(force, nnx.Module):
        from ..models.adapter import as_apply

        apply, params = as_apply(force)
        return ApplyForce(apply, params)
    if not callable(force):
        raise ValueError(f"force must be callable as force(x, tau), got {type(force).__name__}")
    return _StaticForce(force)


class _StaticForce(eqx.Module):
    fn: Callable = eqx.field(static=True)

    def __call__(self, x, tau):
        return self.fn(x, tau)


class ApplyForce(eqx.Module):
    """A force from a batched network `apply(params, x, t)`: F(x, tau) = apply(params, x[None], tau[None])[0].

    `params` are pytree leaves (so the force can be trained or swapped without recompiling); `apply` is static.
    """

    apply: Callable = eqx.field(static=True)
    params: object

    def __call__(self, x, tau):
        return self.apply(self.params, x[None], jnp.asarray(tau, x.dtype)[None])[0]


class ForceFieldHGFPath(AbstractFirstOrderPath, AbstractSourceDensity):
    """HGF for a general force field F(x, tau), integrated by velocity Verlet with `n_steps` steps.

    Draws v0 ~ N(0, sigma_v^2 I), integrates the PH-ODE from (x1, v0) over [0, tau], tau = T (1 - t), and returns
    x_tau with the target u = d x_tau / dt taken by `jax.jvp` through the integrator: the exact velocity of the
    discrete path (it equals the paper's -T v_tau up to O((T/n_steps)^2), tested). No closed form for the law at
    tau = T exists in general, so the source is *declared*: N(0, source_std^2 I) (exact for the harmonic force
    -alpha^2 x with T = pi/(2 alpha) and source_std = sigma_v / alpha, up to the integration error).

    Args:
        force: `force(x, tau) -> (*d)` for one example: an equinox module (e.g. `HarmonicForce`), a Flax NNX module
            taking batched `(x, t)` (split into `ApplyForce`), or a plain function (held static).
        tau_max: T > 0. sigma_v: velocity scale > 0. source_std: declared source scale > 0.
        n_steps: static number of Verlet steps over [0, tau].
    """

    force: ham.Force = eqx.field(converter=_as_force)
    tau_max: Array = eqx.field(converter=_array, default=0.5 * math.pi)
    sigma_v: Array = eqx.field(converter=_array, default=1.0)
    source_std: Array = eqx.field(converter=_array, default=1.0)
    n_steps: int = eqx.field(static=True, default=32)

    def __check_init__(self):
        check_positive(self.tau_max, "ForceFieldHGFPath tau_max")
        check_positive(self.sigma_v, "sigma_v (the initial velocity scale)")
        check_positive(self.source_std, "ForceFieldHGFPath source_std")
        if self.n_steps < 1:
            raise ValueError(f"ForceFieldHGFPath n_steps must be >= 1, got {self.n_steps}")

    def tau(self, t: Scalar) -> Scalar:
        """The paper's clock tau = T (1 - t)."""
        return self.tau_max * (1.0 - t)

    def state(self, x1: Array, v0: Array, t: Scalar) -> tuple[Array, Array]:
        """(x_tau, v_tau) after integrating from (x1, v0) to tau(t) (paper clock)."""
        return ham.hamiltonian_flow(
            self.force, x1, v0, self.tau(t), n_steps=self.n_steps, adjoint=diffrax.DirectAdjoint()
        )

    def sample_source(self, key: Key, shape: tuple[int, ...]) -> Array:
        return self.source_std * jax.random.normal(key, shape)

    def source_log_prob(self, z0: Array) -> Scalar:
        return _gaussian_log_prob(z0, self.source_std)

    def sample_conditional(self, key: Key, x1: Float[Array, "*d"], t: Scalar) -> PathSample:
        t = check_scalar_time(t)
        v0 = self.sigma_v * jax.random.normal(key, jnp.shape(x1), jnp.result_type(x1, t))
        x1 = x1.astype(v0.dtype)
        x, dxdt = jax.jvp(lambda s: self.state(x1, v0, s)[0], (t.astype(v0.dtype),), (jnp.ones((), v0.dtype),))
        return PathSample(x, dxdt)


class ReflectingBoxHGFPath(AbstractFirstOrderPath, AbstractSourceDensity):
    """Reflection HGF: free flight x1 + tau v0 in the box [-L, L]^d with elastic walls (an infinite wall force).

    Closed form per coordinate by unfolding: y = x1 + tau v0 + L taken modulo 4L gives x = y - L, v = v0 on
    [0, 2L) and x = 3L - y, v = -v0 on [2L, 4L). Clock tau = T (1 - t), target u = -T v_tau. As T sigma_v / L
    grows the law at tau = T becomes uniform on the box (the Fourier modes decay like
    exp(-(pi k T sigma_v / (2L))^2 / 2), ~3e-9 for the default T sigma_v / L = 4), which is the declared source.
    Data must lie inside the box.

    Args: half_width L > 0, sigma_v > 0, tau_max T > 0.
    """

    half_width: Array = eqx.field(converter=_array, default=2.0)
    sigma_v: Array = eqx.field(converter=_array, default=1.0)
    tau_max: Array = eqx.field(converter=_array, default=8.0)

    def __check_init__(self):
        check_positive(self.half_width, "ReflectingBoxHGFPath half_width")
        check_positive(self.sigma_v, "sigma_v (the initial velocity scale)")
        check_positive(self.tau_max, "ReflectingBoxHGFPath tau_max")

    def tau(self, t: Scalar) -> Scalar:
        """The paper's clock tau = T (1 - t)."""
        return self.tau_max * (1.0 - t)

    def state(self, x1: Array, v0: Array, tau: Scalar) -> tuple[Array, Array]:
        """(x_tau, v_tau) of the reflected free flight (paper clock)."""
        L = self.half_width
        y = jnp.mod(x1 + tau * v0 + L, 4.0 * L)
        forward = y < 2.0 * L
        return jnp.where(forward, y - L, 3.0 * L - y), jnp.where(forward, v0, -v0)

    def sample_source(self, key: Key, shape: tuple[int, ...]) -> Array:
        return jax.random.uniform(key, shape, minval=-self.half_width, maxval=self.half_width)

    def source_log_prob(self, z0: Array) -> Scalar:
        inside = jnp.all(jnp.abs(z0) <= self.half_width)
        return jnp.where(inside, -z0.size * jnp.log(2.0 * self.half_width), -jnp.inf)

    def sample_conditional(self, key: Key, x1: Float[Array, "*d"], t: Scalar) -> PathSample:
        t = check_scalar_time(t)
        v0 = self.sigma_v * jax.random.normal(key, jnp.shape(x1), jnp.result_type(x1, t))
        x, v = self.state(x1.astype(v0.dtype), v0, self.tau(t))
        return PathSample(x, -self.tau_max * v)


__all__ = [
    "ApplyForce",
    "CoupledZeroForceHGFPath",
    "ForceFieldHGFPath",
    "OscillationHGFPath",
    "ReflectingBoxHGFPath",
    "ZeroForceHGFPath",
]
