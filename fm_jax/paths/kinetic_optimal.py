"""Kinetic-optimal (KO) Gaussian paths (Shaul et al. 2023): the KO schedule and an `AffinePath` built on it.

A KO path is `AffinePath(ko_schedule(lam))` (or `ko_path(lam)`); this module holds the schedule (`KineticOptimal`,
built by `ko_schedule` from a separation function, or by `fit_ko_schedule` from a dataset). The pure maths it
uses (the data separation function lambda, gamma of Eq. 27, kinetic energies) lives in `fm_jax.kinetic`, which
re-exports the names defined here. Same clock as the paper: noise at t = 0, data at t = 1.

The closed form. The paper states the optimal radius r_t (Eq. 28) and an ODE for the angle theta_t (Eq. 29,
Theorem 3.1), and in its experiments (Sec. 6.1) fits theta_t with a small (10-parameter) network by minimising
the energy of Eq. 27 by gradient descent. This module does neither: with psi(theta) = int_0^theta sqrt(gamma) the
metric of Eq. 27 is flat in polar coordinates (r, psi), so the minimiser is the constant-speed chord from
(1, psi = 0) to (1, B), B = psi(pi/2), with minimal energy b = 2 (1 - cos B). That closed form is our derivation,
not the paper's (it reproduces Eqs. 28-29, and `fm_jax.kinetic.minimise_kinetic_energy` checks it against a
direct minimisation of the discretised Eq. 27).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive
from .._typing import Array, Key, Scalar
from .._util import as_float_array as _float
from ..kinetic import (
    FittedSeparation,
    SeparationEstimate,
    data_separation,
    fit_data_separation,
    separation_to_gamma,
)
from .affine import AbstractSchedule, AffinePath


class KineticOptimal(AbstractSchedule):
    """The kinetic-optimal affine schedule (the minimiser of Eq. 27, Theorem 3.1) for a separation function lambda.

    Computed from the closed-form chord below (our derivation; the paper integrates the ODE of Eq. 29 or fits
    theta_t with a network, see the module docstring).

        alpha(t) = a_t = r_t sin(theta_t) / c,   sigma(t) = m_t = r_t cos(theta_t),
        r_t e^{i psi(theta_t)} = (1 - t) + t c e^{i B}   (the chord from (r, psi) = (1, 0) to (c, B)),
        psi(theta) = int_0^theta sqrt(gamma),  B = psi(pi/2),  b = 1 + c^2 - 2 c cos B = minimal kinetic energy.

    c = `scale` is the data's RMS scale ((1/d) E||x1||^2 = c^2; c = 1 for normalised data, the paper's setting):
    x_t = a_t x1 + m_t x0 = (c a_t) y1 + m_t x0 with y1 = x1 / c normalised, so the polar coordinates are those of
    (c a_t, m_t) and the end point is (r, theta) = (c, pi/2). With c = 1: r_t^2 = 1 - b t + b t^2 (Eq. 28),
    psi_t = atan2(t sin B, 1 - t + t cos B), b = 2 (1 - cos B), and d/dt psi_t gives Eq. 29.
    theta_0 = 0, theta_1 = pi/2, so alpha(0) = 0, sigma(0) = 1, alpha(1) = 1, sigma(1) = 0.

    psi is tabulated on a uniform theta grid (arrays: a pytree whose values can change without recompiling) and
    inverted by linear interpolation; derivatives come from `jax.jvp` of that interpolant (exact for the stored
    path, within O(grid step) of Eq. 29). Build with `ko_schedule`.
    """

    theta_grid: Array = eqx.field(converter=_float)
    psi_grid: Array = eqx.field(converter=_float)
    gamma_grid: Array = eqx.field(converter=_float)
    B: Array = eqx.field(converter=_float)
    b: Array = eqx.field(converter=_float)
    scale: Array = eqx.field(converter=_float, default=1.0)

    def _interp(self, x, xp, fp):
        i = jnp.clip(jnp.searchsorted(xp, x, side="right") - 1, 0, xp.shape[0] - 2)
        return fp[i] + (x - xp[i]) * (fp[i + 1] - fp[i]) / (xp[i + 1] - xp[i])

    def gamma(self, theta: Scalar) -> Scalar:
        """gamma(theta) of Eq. 27 (floored at `gamma_min`), interpolated from the table."""
        return self._interp(jnp.asarray(theta), self.theta_grid, self.gamma_grid)

    def _chord(self, t):
        return 1.0 - t + t * self.scale * jnp.cos(self.B), t * self.scale * jnp.sin(self.B)

    def radius(self, t: Scalar) -> Scalar:
        """r_t = |(1 - t) + t c e^{iB}| (= sqrt(1 - b t + b t^2), Eq. 28, when c = 1)."""
        x, y = self._chord(jnp.asarray(t))
        return jnp.sqrt(x**2 + y**2)

    def psi(self, t: Scalar) -> Scalar:
        """The flattened angle psi_t = arg((1 - t) + t c e^{iB})."""
        x, y = self._chord(jnp.asarray(t))
        return jnp.arctan2(y, x)

    def angle(self, t: Scalar) -> Scalar:
        """theta_t, from 0 at t = 0 to pi/2 at t = 1."""
        return self._interp(self.psi(t), self.psi_grid, self.theta_grid)

    def alpha(self, t):
        t = jnp.asarray(t)
        return self.radius(t) * jnp.sin(self.angle(t)) / self.scale

    def sigma(self, t):
        t = jnp.asarray(t)
        return self.radius(t) * jnp.cos(self.angle(t))


def ko_schedule(
    lam: Callable[[Array], Array], *, gamma_min: float = 1e-6, num_grid: int = 4097, data_scale: float = 1.0
) -> KineticOptimal:
    """The kinetic-optimal schedule (Theorem 3.1) for a data separation function `lam`, from our closed form.

    gamma(theta) = 1 - (1 - lam(tan theta)) / cos^2 theta (Eq. 27) is tabulated in float64 on `num_grid` uniform
    angles, floored at `gamma_min`, and integrated (trapezoid) to psi(theta) = int sqrt(gamma) and
    B = psi(pi/2); then b = 2 (1 - cos B) and the path of `KineticOptimal`. Flooring gamma at q is the same as
    replacing lam by max(lam, (q + s^2)/(1 + s^2)); it keeps Theorem 3.1's hypothesis gamma > 0 and bounds the
    angular speed by theta' <= sin B / (r_t^2 sqrt(q)). For normalised data lam(s) ~ c s^2 near s = 0, so the exact
    KO path has gamma(0) = 0 and an infinite speed at t = 0 (theta_t ~ t^(1/2) or slower): training on it needs a
    larger floor (e.g. 0.05).

    Args:
        lam: callable, lam(s) for an array s >= 0 (any such function: `fit_data_separation(...)`,
            `lambda s: jnp.ones_like(s)` ...). It must satisfy s^2/(1+s^2) <= lam(s) <= 1 (ValueError otherwise,
            with 1e-3 slack).
        gamma_min: floor of gamma, > 0.
        num_grid: number of tabulated angles (static; same value -> same shapes -> no recompilation).
        data_scale: RMS scale c of unnormalised, centred data ((1/d) E||x1||^2 = c^2), with `lam` the separation
            function of x1 / c; see `KineticOptimal`. 1 for normalised data.
    Returns:
        `KineticOptimal` schedule; `AffinePath(ko_schedule(lam))` is the KO path.
    Example:
        >>> sched = ko_schedule(lambda s: jnp.ones_like(s))   # lambda = 1: Cond-OT, b = 2
    """
    check_positive(gamma_min, "ko_schedule gamma_min")
    check_positive(data_scale, "ko_schedule data_scale")
    if num_grid < 3:
        raise ValueError(f"num_grid must be at least 3, got {num_grid}")
    with jax.enable_x64(True):
        theta = jnp.linspace(0.0, 0.5 * math.pi, num_grid, dtype=jnp.float64)
        gamma = np.array(separation_to_gamma(lam, theta), dtype=np.float64)
    theta = np.linspace(0.0, 0.5 * math.pi, num_grid)
    if not np.all(np.isfinite(gamma[:-1])):
        raise ValueError("lam returned non-finite values")
    # At theta = pi/2 Eq. 27 is 0 * inf (tan(pi/2) is finite but huge in floating point): extrapolate linearly.
    gamma[-1] = min(max(2.0 * gamma[-2] - gamma[-3], 0.0), 1.0)
    if gamma.min() < -1e-3:
        k = int(np.argmin(gamma))
        raise ValueError(
            f"lam must satisfy lam(s) >= s^2/(1+s^2) (gamma >= 0); at s = {np.tan(theta[k]):.4g} gamma = {gamma[k]:.4g}"
        )
    if gamma.max() > 1.0 + 1e-3:
        k = int(np.argmax(gamma))
        raise ValueError(f"lam must satisfy lam(s) <= 1; at s = {np.tan(theta[k]):.4g} gamma = {gamma[k]:.4g} > 1")
    gamma = np.clip(gamma, float(gamma_min), 1.0)
    root = np.sqrt(gamma)
    psi = np.concatenate([[0.0], np.cumsum(0.5 * (root[1:] + root[:-1]) * np.diff(theta))])
    B = psi[-1]
    c = float(data_scale)
    b = 2.0 * (1.0 - np.cos(B)) if c == 1.0 else 1.0 + c * c - 2.0 * c * np.cos(B)
    return KineticOptimal(theta, psi, gamma, B, b, c)


class KOFit(NamedTuple):
    """A KO schedule fitted to a dataset, with what it was fitted from."""

    schedule: KineticOptimal
    separation: FittedSeparation
    s: Array
    estimate: SeparationEstimate
    data_scale: float


def fit_ko_schedule(
    key: Key,
    data: Array,
    *,
    s: Array | None = None,
    num_noise: int = 2000,
    gamma_min: float = 1e-6,
    num_grid: int = 4097,
) -> KOFit:
    """Estimate lambda on a log grid of SNRs, fit it and build the KO schedule for (possibly unnormalised) data.

    The data are centred and divided by their RMS scale c for lambda; the schedule gets `data_scale=c`, so it is
    kinetic-optimal for the data as given (its mean, if any, is ignored). Runs on the host.

    Args:
        key: PRNG key. data: (n, *shape). s: SNR grid (default 32 values from 1e-2 to 1e3).
        num_noise, gamma_min, num_grid: see `data_separation` and `ko_schedule`.
    Returns:
        `KOFit(schedule, separation, s, estimate, data_scale)`.
    """
    data = jnp.asarray(data, dtype=jnp.result_type(data, float))
    flat = data.reshape(data.shape[0], -1)
    centred = flat - flat.mean(axis=0)
    c = float(jnp.sqrt(jnp.mean(centred**2)))
    s = jnp.geomspace(1e-2, 1e3, 32) if s is None else jnp.asarray(s)
    est = data_separation(key, centred / c, s, num_noise)
    fit = fit_data_separation(s, est.lam, est.stderr, est.complement)
    sched = ko_schedule(fit, gamma_min=gamma_min, num_grid=num_grid, data_scale=c)
    return KOFit(sched, fit, s, est, c)


def ko_path(
    lam: Callable[[Array], Array], *, gamma_min: float = 1e-6, num_grid: int = 4097, data_scale: float = 1.0
) -> AffinePath:
    """The KO path `AffinePath(ko_schedule(lam, ...))` for a data separation function `lam` (see `ko_schedule`).

    Example:
        >>> path = ko_path(lambda s: (0.3 + s**2) / (1 + s**2))   # gamma = 0.3: closed form theta_t
    """
    return AffinePath(ko_schedule(lam, gamma_min=gamma_min, num_grid=num_grid, data_scale=data_scale))


__all__ = ["KOFit", "KineticOptimal", "fit_ko_schedule", "ko_path", "ko_schedule"]
