"""Kinetic-optimal Gaussian paths: data separation function, KO schedule and kinetic energies.

Shaul, Chen, Nickel, Le, Lipman, "On Kinetic Optimal Probability Paths for Generative Models", ICML 2023
(arXiv 2306.06626). Equation numbers follow the paper as quoted in the project's notes.

Symbols and clock. The paper's Gaussian conditional path is p_t(x | x1) = N(a_t x1, m_t^2 I) with noise at t = 0
and data at t = 1, the same clock as fm_jax: the paper's signal a_t is our `alpha(t)` and its noise m_t our
`sigma(t)`; no time map is needed. The signal-to-noise ratio is s = a_t / m_t, and polar coordinates are
(a_t, m_t) = r_t (sin theta_t, cos theta_t) (Eq. 25).

Data are assumed normalised (Eqs. 7-8): E x1 = 0 and (1/d) E ||x1||^2 = 1 (mean per-dimension variance one;
`normalise_data` centres and rescales a dataset globally, which is what these identities need).

Contents
- `data_separation` (Eq. 23 / 36): Monte-Carlo lambda_hat(s) = (1/d) E ||E[x1 | x]||^2 for x = x1 + eps / s,
  with the exact softmax posterior over the dataset, blocked over data and noise (memory bounded).
- `fit_data_separation`: a monotone, bounded fit of lambda_hat on a log grid (a pytree of arrays, jit-able).
- `separation_to_gamma` (Eq. 27) and `minimise_kinetic_energy` (a direct minimisation of the discretised Eq. 27).
  The KO schedule itself (`KineticOptimal`, `ko_schedule`, `fit_ko_schedule`) lives in
  `fm_jax.paths.kinetic_optimal` and is re-exported here. Its closed form (psi = int sqrt(gamma), the chord,
  b = 2 (1 - cos B)) is our derivation; the paper gives Eq. 28 for r_t and an ODE for theta_t (Eq. 29,
  Theorem 3.1) and fits theta_t with a small network (Sec. 6.1); see that module's docstring.
- Kinetic energies: `marginal_kinetic_energy` (Eq. 18, exact posterior mean on a finite dataset),
  `conditional_kinetic_energy` (Eq. 20), `separation_kinetic_energy` (the right side of Eq. 21,
  E = E_c - int beta_t^2 (1 - lambda(a_t / m_t)) dt) and `kinetic_energy` (all three at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_positive, is_concrete
from ._typing import Array, Key
from ._util import as_float_array as _float
from .paths.affine import AbstractSchedule


def gaussian_separation(s: Array) -> Array:
    """lambda(s) = s^2 / (1 + s^2): the data separation function of N(0, I) data, a lower bound for all data."""
    s = jnp.asarray(s)
    return s**2 / (1.0 + s**2)


# ----------------------------------------------------------------------------------------------------------------
# Normalisation and the blocked exact posterior
# ----------------------------------------------------------------------------------------------------------------


def normalise_data(data: Array) -> Array:
    """Centre a dataset and rescale it globally so that (1/d) mean ||x||^2 = 1 (Eqs. 7-8).

    Args: data (n, *shape). Returns the same shape. One global scale (not one per pixel) keeps constant pixels
    (MNIST borders) finite and leaves the data's shape alone.
    """
    data = jnp.asarray(data, dtype=jnp.result_type(data, float))
    flat = data.reshape(data.shape[0], -1)
    flat = flat - flat.mean(axis=0)
    scale = jnp.sqrt(jnp.mean(flat**2))
    return (flat / scale).reshape(data.shape)


def check_normalised(data: Array, tol: float = 1e-2, name: str = "data") -> None:
    """Raise ValueError unless (1/d)||mean||^2 <= tol^2 and |(1/d) mean ||x||^2 - 1| <= tol (concrete data only)."""
    if not is_concrete(data):
        return
    # Reductions in the data's own precision: no float64 copy of a large dataset (the tolerance is loose).
    flat = jnp.asarray(data).reshape(jnp.shape(data)[0], -1)
    d = flat.shape[1]
    mean_sq = float(jnp.sum(jnp.mean(flat, axis=0) ** 2) / d)
    second = float(jnp.mean(jnp.sum(flat**2, axis=1)) / d)
    if not np.isfinite(second):
        raise ValueError(f"{name} contains non-finite values")
    if mean_sq > tol**2 or abs(second - 1.0) > tol:
        raise ValueError(
            f"{name} must be normalised (zero mean, (1/d) E||x||^2 = 1; Eqs. 7-8 of Shaul et al.): got "
            f"(1/d)||mean||^2 = {mean_sq:.3g} and (1/d) E||x||^2 = {second:.4g} (tolerance {tol}); "
            "use fm_jax.kinetic.normalise_data"
        )


def _posterior_means(data: Array, centres: Array, noise: Array, snr: Array, block_data: int) -> Array:
    """E[x1 | x] under the empirical prior for x = centre + noise / snr, blocked over the dataset.

    The posterior over the dataset is softmax_i(-snr^2 ||x - x^i||^2 / 2) (Eq. 36); dropping the term that does not
    depend on i, its logits are snr^2 (c . x^i - ||x^i||^2 / 2) + snr (noise . x^i), two matrix products per data
    block. A running log-sum-exp (maximum, sum, weighted sum) keeps only one block of logits alive.

    Args:
        data: (n, d). centres, noise: (q, d). snr: (S, q), one SNR per query and row. block_data: static int.
    Returns:
        (S, q, d) posterior means.
    """
    n, d = data.shape
    block = min(block_data, n)
    num_blocks = -(-n // block)

    def body(carry, i):
        run_max, run_sum, acc = carry
        # The last block is shifted back to stay in range; rows already seen are masked out.
        start = jnp.minimum(i * block, n - block)
        xb = jax.lax.dynamic_slice_in_dim(data, start, block, axis=0)
        fresh = (start + jnp.arange(block)) >= i * block
        half_sq = 0.5 * jnp.sum(xb**2, axis=-1)
        cross = centres @ xb.T
        noise_dot = noise @ xb.T
        s = snr[..., None]
        logits = s**2 * (cross - half_sq) + s * noise_dot
        logits = jnp.where(fresh, logits, -jnp.inf)
        new_max = jnp.maximum(run_max, jnp.max(logits, axis=-1))
        rescale = jnp.exp(run_max - new_max)
        p = jnp.exp(logits - new_max[..., None])
        run_sum = run_sum * rescale + jnp.sum(p, axis=-1)
        acc = acc * rescale[..., None] + jnp.einsum("sqb,bd->sqd", p, xb)
        return (new_max, run_sum, acc), None

    dtype = jnp.result_type(data, snr)
    init = (
        jnp.full(snr.shape, -jnp.inf, dtype),
        jnp.zeros(snr.shape, dtype),
        jnp.zeros(snr.shape + (d,), dtype),
    )
    (_, run_sum, acc), _ = jax.lax.scan(body, init, jnp.arange(num_blocks))
    return acc / run_sum[..., None]


# ----------------------------------------------------------------------------------------------------------------
# Data separation function
# ----------------------------------------------------------------------------------------------------------------


class SeparationEstimate(NamedTuple):
    """Monte-Carlo estimate of lambda(s): `lam`, its standard error `stderr`, and `complement` = 1 - lam (the
    per-dimension MMSE, estimated directly so that it keeps its relative precision where lam ~ 1), all (S,)."""

    lam: Array
    stderr: Array
    complement: Array


def data_separation(
    key: Key,
    data: Array,
    s: Array,
    num_noise: int,
    *,
    block_data: int = 1024,
    block_noise: int = 128,
    tol: float = 1e-2,
) -> SeparationEstimate:
    """Monte-Carlo estimate of the data separation function lambda(s) (Eq. 23, estimator Eq. 39).

        lambda(s) = (1/d) E_{x ~ rho_s} || E_{rho_s(x1 | x)}[x1] ||^2,   x = x1 + eps / s,  x1 ~ data, eps ~ N(0, I),

    with the exact softmax posterior over the whole dataset (Eq. 36). The same noise draws (x1 index, eps) serve
    every s (common random numbers), so the estimate is smooth in s. Two unbiased forms are computed, Eq. 23 itself
    and 1 - MMSE with MMSE = (1/d) E||x1 - E[x1|x]||^2 (equal for normalised data), each with ||x1||^2 / d as a
    control variate, and the one with the smaller error bar is returned per s: the error then vanishes both as
    s -> 0 and as s -> infinity, and `complement` = 1 - lambda keeps its relative precision at large s.
    Memory: one block of len(s) x block_noise x block_data logits plus a len(s) x block_noise x d accumulator;
    the dataset is never
    copied or padded (a 50,000 x 3,072 dataset costs ~0.6 GB for itself, ~0.1 GB more at the defaults with 40 s).

    Args:
        key: PRNG key.
        data: (n, *shape), normalised (zero mean, (1/d) E||x||^2 = 1; checked when concrete, ValueError otherwise).
        s: (S,) or scalar, SNR values > 0.
        num_noise: number k of noise samples (static).
        block_data, block_noise: block sizes (static).
        tol: tolerance of the normalisation check.
    Returns:
        `SeparationEstimate(lam, stderr)`, each shaped like `s`.
    """
    s = jnp.asarray(s, dtype=jnp.result_type(data, float))
    check_positive(s, "data_separation s (signal-to-noise ratio)")
    if num_noise < 2:
        raise ValueError(f"num_noise must be at least 2 (for an error bar), got {num_noise}")
    check_normalised(data, tol)
    out_shape = s.shape
    s = s.reshape(-1)
    data = jnp.asarray(data, dtype=s.dtype)
    flat = data.reshape(data.shape[0], -1)
    n, d = flat.shape
    num_blocks = -(-num_noise // block_noise)

    def one_block(b):
        k_idx, k_eps = jax.random.split(jax.random.fold_in(key, b))
        idx = jax.random.randint(k_idx, (block_noise,), 0, n)
        eps = jax.random.normal(k_eps, (block_noise, d), s.dtype)
        centres = flat[idx]
        snr = jnp.broadcast_to(s[:, None], (s.shape[0], block_noise))
        mu = _posterior_means(flat, centres, eps, snr, block_data)
        # ||E[x1|x]||^2 / d (Eq. 23 itself) and the per-sample MMSE ||x1 - E[x1|x]||^2 / d, whose mean is
        # 1 - lambda for normalised data and which keeps its relative precision as the posterior collapses on x1.
        sq = jnp.sum(mu**2, axis=-1) / d
        mmse = jnp.sum((mu - centres) ** 2, axis=-1) / d
        return sq, mmse, jnp.sum(centres**2, axis=-1) / d

    sq, mmse, norms = jax.lax.map(one_block, jnp.arange(num_blocks))  # (blocks, S, block_noise) x2, (blocks, bn)
    sq = jnp.moveaxis(sq, 1, 0).reshape(s.shape[0], -1)[:, :num_noise]
    mmse = jnp.moveaxis(mmse, 1, 0).reshape(s.shape[0], -1)[:, :num_noise]
    norms = norms.reshape(-1)[:num_noise]
    # Control variate Z = ||x1||^2 / d, whose dataset mean is known exactly (regression coefficient per s; bias
    # O(1/k)). Its spread across the data would otherwise dominate the error of the MMSE form at low SNR.
    z_mean = jnp.mean(jnp.sum(flat**2, axis=-1)) / d
    zc = norms - norms.mean()
    var_z = jnp.mean(zc**2)

    def adjust(w):
        c = jnp.where(var_z > 0, jnp.mean((w - w.mean(axis=1, keepdims=True)) * zc, axis=1) / var_z, 0.0)
        a = w - c[:, None] * (norms - z_mean)
        return a.mean(axis=1), a.std(axis=1, ddof=1) / math.sqrt(num_noise)

    lam_direct, se_direct = adjust(sq)
    comp_mmse, se_mmse = adjust(mmse)
    # Per s, the form with the smaller error bar: the direct one at low SNR (its error vanishes like s^2), the MMSE
    # one at high SNR (its error vanishes with the MMSE).
    use_direct = se_direct <= se_mmse
    lam = jnp.where(use_direct, lam_direct, 1.0 - comp_mmse)
    complement = jnp.where(use_direct, 1.0 - lam_direct, comp_mmse)
    stderr = jnp.minimum(se_direct, se_mmse)
    return SeparationEstimate(lam.reshape(out_shape), stderr.reshape(out_shape), complement.reshape(out_shape))


class FittedSeparation(eqx.Module):
    """A fitted data separation function: monotone cubic (PCHIP) in log s through projected nodes.

    Inside the nodes: the Fritsch-Carlson monotone Hermite cubic in u = log s, then max with s^2/(1+s^2).
    Below the first node the ratio lambda / (s^2/(1+s^2)) is held fixed; above the last node the ratio
    (1 - lambda) / (1 - s^2/(1+s^2)) is held fixed. Each piece is non-decreasing and lies in
    [s^2/(1+s^2), 1], so the whole function does. A pytree of arrays: refitting never recompiles.

    Call with an array of s >= 0 (any shape); returns lambda(s) of the same shape.
    """

    log_s: Array = eqx.field(converter=_float)
    values: Array = eqx.field(converter=_float)
    slopes: Array = eqx.field(converter=_float)
    complements: Array = eqx.field(converter=_float)  # 1 - values, computed in float64 (kept exact near 1)

    def _hermite(self, u, y, m):
        x = self.log_s
        i = jnp.clip(jnp.searchsorted(x, u, side="right") - 1, 0, x.shape[0] - 2)
        h = x[i + 1] - x[i]
        tau = jnp.clip((u - x[i]) / h, 0.0, 1.0)
        h00 = (1 + 2 * tau) * (1 - tau) ** 2
        h10 = tau * (1 - tau) ** 2
        h01 = tau**2 * (3 - 2 * tau)
        h11 = tau**2 * (tau - 1)
        return h00 * y[i] + h10 * h * m[i] + h01 * y[i + 1] + h11 * h * m[i + 1]

    def _log(self, s):
        s = jnp.asarray(s, dtype=jnp.result_type(s, self.values))
        return s, jnp.log(jnp.maximum(s, jnp.finfo(s.dtype).tiny))

    def __call__(self, s: Array) -> Array:
        s, u = self._log(s)
        x, y = self.log_s, self.values
        g = gaussian_separation(s)
        g_lo, g_hi = gaussian_separation(jnp.exp(x[0])), gaussian_separation(jnp.exp(x[-1]))
        below = y[0] * g / g_lo
        above = 1.0 - (1.0 - y[-1]) * (1.0 - g) / (1.0 - g_hi)
        inner = self._hermite(u, y, self.slopes)
        lam = jnp.where(u < x[0], below, jnp.where(u > x[-1], above, inner))
        return jnp.clip(jnp.maximum(lam, g), 0.0, 1.0)

    def complement(self, s: Array) -> Array:
        """1 - lambda(s), computed without cancellation where lambda is close to 1 (large s)."""
        s, u = self._log(s)
        x, y = self.log_s, self.values
        one_minus_g = 1.0 / (1.0 + s**2)
        g_lo = gaussian_separation(jnp.exp(x[0]))
        below = 1.0 - y[0] * (1.0 - one_minus_g) / g_lo
        above = self.complements[-1] * one_minus_g * (1.0 + jnp.exp(2.0 * x[-1]))
        inner = self._hermite(u, self.complements, -self.slopes)
        comp = jnp.where(u < x[0], below, jnp.where(u > x[-1], above, inner))
        return jnp.clip(jnp.minimum(comp, one_minus_g), 0.0, 1.0)


def _isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for yi, wi in zip(y, w):
        blocks.append([yi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([np.full(c, m) for m, _, c in blocks])


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson slopes (weighted harmonic mean) that keep a Hermite cubic monotone."""
    h = np.diff(x)
    delta = np.diff(y) / h
    m = np.zeros_like(y)
    for k in range(1, len(y) - 1):
        if delta[k - 1] * delta[k] > 0:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            m[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
    # One-sided three-point ends, limited to keep monotonicity.
    for end, (d0, d1, h0, h1) in ((0, (delta[0], delta[min(1, len(delta) - 1)], h[0], h[min(1, len(h) - 1)])),
                                  (-1, (delta[-1], delta[max(-2, -len(delta))], h[-1], h[max(-2, -len(h))]))):
        mk = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1) if len(delta) > 1 else d0
        if mk * d0 <= 0:
            mk = 0.0
        elif d0 * d1 <= 0 and abs(mk) > 3 * abs(d0):
            mk = 3 * d0
        m[end] = mk
    return m


def fit_data_separation(
    s: Array, lam_hat: Array, stderr: Array | None = None, complement: Array | None = None
) -> FittedSeparation:
    """Fit a monotone lambda(s) with s^2/(1+s^2) <= lambda <= 1 to Monte-Carlo values on a grid of s.

    The nodes are the estimates clipped to [s^2/(1+s^2), 1], projected on non-decreasing sequences (weighted by
    1/stderr^2 when given), and clipped again; between nodes a monotone cubic in log s; outside them the tails
    described in `FittedSeparation`. Passing `complement` (= 1 - lam_hat, e.g. `SeparationEstimate.complement`)
    keeps 1 - lambda accurate at large s, which gamma(theta) near pi/2 needs. Inputs must be concrete (the fit runs
    on the host, in float64).

    Args:
        s: (S,) SNR grid, S >= 2, all > 0 and distinct. lam_hat: (S,) estimates. stderr, complement: optional (S,).
    Returns:
        A `FittedSeparation` (callable `lam(s)`, jit-able, a pytree of arrays).
    Example:
        >>> est = data_separation(key, data, s, 2000)
        >>> lam = fit_data_separation(s, *est)
    """
    s_np = np.asarray(s, dtype=np.float64).reshape(-1)
    y = np.asarray(lam_hat, dtype=np.float64).reshape(-1)
    if s_np.shape != y.shape:
        raise ValueError(f"s has {s_np.size} values but lam_hat has {y.size}; they must match")
    if s_np.size < 2:
        raise ValueError("fit_data_separation needs at least two grid points")
    comp = 1.0 - y if complement is None else np.asarray(complement, dtype=np.float64).reshape(-1)
    if comp.shape != s_np.shape:
        raise ValueError(f"complement has {comp.size} values but s has {s_np.size}; they must match")
    if not (np.all(np.isfinite(s_np)) and np.all(np.isfinite(y)) and np.all(np.isfinite(comp))):
        raise ValueError("s and lam_hat must be finite")
    if np.any(s_np <= 0):
        raise ValueError(f"s (signal-to-noise ratio) must be positive, got min {s_np.min()}")
    order = np.argsort(s_np)
    s_np, comp = s_np[order], comp[order]
    if np.any(np.diff(s_np) <= 0):
        raise ValueError("s must hold distinct values")
    w = np.ones_like(comp) if stderr is None else 1.0 / np.maximum(np.asarray(stderr, np.float64)[order], 1e-30) ** 2
    # Work with the complement 1 - lambda in [0, 1/(1+s^2)], non-increasing.
    upper = 1.0 / (1.0 + s_np**2)
    comp = np.clip(comp, 0.0, upper)
    comp = -_isotonic(-comp, w)
    comp = np.minimum.accumulate(np.clip(comp, 0.0, upper))
    y = 1.0 - comp
    x = np.log(s_np)
    return FittedSeparation(x, y, _pchip_slopes(x, y), comp)


# ----------------------------------------------------------------------------------------------------------------
# Kinetic-optimal schedule
# ----------------------------------------------------------------------------------------------------------------


def separation_to_gamma(lam: Callable[[Array], Array], theta: Array) -> Array:
    """gamma(theta) = 1 - (1 - lambda(tan theta)) / cos^2 theta = 1 - (1 - lambda(s)) (1 + s^2), s = tan theta (Eq. 27).

    For a `FittedSeparation`, 1 - lambda comes from its `complement` (no cancellation near theta = pi/2).
    """
    s = jnp.tan(theta)
    comp = lam.complement(s) if isinstance(lam, FittedSeparation) else 1.0 - lam(s)
    return 1.0 - comp * (1.0 + s**2)


def minimise_kinetic_energy(
    lam: Callable[[Array], Array], *, num_steps: int = 200, maxiter: int = 5000, data_scale: float = 1.0
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Directly minimise the discretised polar kinetic energy (Eq. 27), a check of the closed form.

        E[r, theta] = sum_k [ (r_{k+1} - r_k)^2 + rbar_k^2 (theta_{k+1} - theta_k)^2 gamma(thetabar_k) ] / dt

    over r_1..r_{N-1} > 0 and theta_1..theta_{N-1} in [0, pi/2] with r_0 = 1, r_N = c (`data_scale`, 1 for
    normalised data), theta_0 = 0, theta_N = pi/2 (bars are midpoints), by L-BFGS-B in float64 from the Cond-OT
    path. Runs on the host (not jit-able).

    Returns:
        (energy, t (N+1,), r (N+1,), theta (N+1,)).
    """
    import scipy.optimize

    n = num_steps
    dt = 1.0 / n
    c = float(data_scale)
    with jax.enable_x64(True):

        def energy(z):
            r = jnp.concatenate([jnp.ones(1), z[: n - 1], jnp.full(1, c)])
            th = jnp.concatenate([jnp.zeros(1), z[n - 1 :], jnp.full(1, 0.5 * math.pi)])
            rbar, thbar = 0.5 * (r[1:] + r[:-1]), 0.5 * (th[1:] + th[:-1])
            g = separation_to_gamma(lam, thbar)
            return jnp.sum(jnp.diff(r) ** 2 + rbar**2 * jnp.diff(th) ** 2 * g) / dt

        value_and_grad = jax.jit(jax.value_and_grad(energy))

        def fun(z):
            v, gz = value_and_grad(jnp.asarray(z))
            return float(v), np.asarray(gz, dtype=np.float64)

        t = np.linspace(0.0, 1.0, n + 1)
        th0 = np.arctan2(c * t, 1.0 - t)
        r0 = np.sqrt((c * t) ** 2 + (1.0 - t) ** 2)
        z0 = np.concatenate([r0[1:-1], th0[1:-1]])
        bounds = [(1e-3, None)] * (n - 1) + [(0.0, 0.5 * math.pi)] * (n - 1)
        res = scipy.optimize.minimize(
            fun, z0, jac=True, method="L-BFGS-B", bounds=bounds,
            options={"maxiter": maxiter, "maxfun": 4 * maxiter, "ftol": 1e-15, "gtol": 1e-11},
        )
    z = res.x
    r = np.concatenate([[1.0], z[: n - 1], [c]])
    th = np.concatenate([[0.0], z[n - 1 :], [0.5 * math.pi]])
    return float(res.fun), t, r, th


# ----------------------------------------------------------------------------------------------------------------
# Kinetic energies (Eqs. 18, 20, 21)
# ----------------------------------------------------------------------------------------------------------------


_DE_HALF_WIDTH = 2.3  # tanh-sinh nodes on x in [-2.3, 2.3]: the outermost sit ~2e-7 from t = 0 and t = 1


def _tanh_sinh(num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, w, w_coarse): tanh-sinh (double-exponential) nodes and weights on (0, 1), and the weights of the rule
    with twice the step on the same nodes (every other node, 0 elsewhere) for an error estimate. An even `num` is
    rounded up to the next odd number.

    t = (1 + tanh((pi/2) sinh x)) / 2 on a uniform grid of x with step h. Nodes crowd doubly exponentially at both
    ends, so integrands with endpoint spikes or integrable singularities (VP's d sigma/dt ~ (1 - t)^(-1/2) up to its
    clock floor; log-type spikes) converge as fast as smooth ones, and |Q_h - Q_2h| bounds the error of Q_2h
    (that of Q_h is far smaller: the trapezoidal rule in x converges exponentially). The nodes never reach t = 0
    or t = 1 (where some schedules have sigma = 0).
    """
    if num < 5:
        raise ValueError(f"num_times must be >= 5 for the double-exponential rule, got {num}")
    num += 1 - num % 2  # odd, so that the coarse rule (every other node) spans the same range
    x = np.linspace(-_DE_HALF_WIDTH, _DE_HALF_WIDTH, num)
    h = x[1] - x[0]
    u = 0.5 * math.pi * np.sinh(x)
    t = 0.5 * (1.0 + np.tanh(u))
    dens = 0.25 * math.pi * np.cosh(x) / np.cosh(u) ** 2
    # Trapezoidal weights in x (half weight at the truncation points x = +-X).
    w = h * dens
    w[[0, -1]] *= 0.5
    w_coarse = np.where(np.arange(num) % 2 == 0, 2.0 * h * dens, 0.0)
    w_coarse[[0, -1]] *= 0.5
    # The tails beyond the outermost nodes (width ~2e-7 each) count with the density there (a rectangle): exact
    # for a density that is flat so close to the end (VP's is flat below its clock floor s_min = 1e-5).
    # The truncated trapezoid misses O(h^2 dens(X)) of the node density: rescaling makes each rule exact for
    # constants, which removes that error for densities that are nearly flat at the ends.
    for weights in (w, w_coarse):
        weights *= (t[-1] - t[0]) / weights.sum()
        weights[0] += t[0]
        weights[-1] += 1.0 - t[-1]
    return t, w, w_coarse


def _coefficients(schedule: AbstractSchedule, t: Array):
    return jax.vmap(lambda u: (schedule.alpha(u), schedule.sigma(u), schedule.d_alpha(u), schedule.d_sigma(u)))(t)


class Quadrature(NamedTuple):
    """A deterministic time integral: `value` and `error`, an estimate of its quadrature error (|Q_h - Q_2h|)."""

    value: Array
    error: Array


def _integrate(density_fn, num_times: int) -> Quadrature:
    t, w, w_coarse = _tanh_sinh(num_times)
    density = density_fn(_float(t))
    value = jnp.sum(_float(w) * density)
    return Quadrature(value, jnp.abs(value - jnp.sum(_float(w_coarse) * density)))


def conditional_kinetic_energy(schedule: AbstractSchedule, *, num_times: int = 65, with_error: bool = False):
    """Conditional kinetic energy E_c = int_0^1 (a'_t^2 + m'_t^2) dt (Eq. 20), by tanh-sinh quadrature.

    For normalised data this is (1/d) int E ||u_t(x | x1)||^2 dt. Cond-OT: E_c = 2. The double-exponential rule
    resolves endpoint spikes (VP: 3.7734 with 65 nodes, where 64 Gauss-Legendre nodes gave 3.7207).

    Args:
        schedule: an affine schedule. num_times: nodes (static). with_error: also return the error estimate.
    Returns:
        E_c (a scalar), or `Quadrature(value, error)` when `with_error`.
    """
    def density(t):
        _, _, da, dm = _coefficients(schedule, t)
        return da**2 + dm**2

    result = _integrate(density, num_times)
    return result if with_error else result.value


def separation_kinetic_energy(
    schedule: AbstractSchedule, lam: Callable[[Array], Array], *, num_times: int = 65, with_error: bool = False
):
    """The right side of Eq. 21: E = E_c - int_0^1 beta_t^2 (1 - lambda(a_t/m_t)) dt, beta_t = a'_t - a_t m'_t / m_t.

    Equal to the marginal kinetic energy (Eq. 18) of normalised data whose separation function is `lam`.
    Tanh-sinh quadrature as in `conditional_kinetic_energy` (nodes avoid t = 0 and t = 1, where m_t may be 0).

    Returns:
        E (a scalar), or `Quadrature(value, error)` when `with_error`.
    """
    def density(t):
        a, m, da, dm = _coefficients(schedule, t)
        beta = da - a * dm / m
        return da**2 + dm**2 - beta**2 * (1.0 - lam(a / m))

    result = _integrate(density, num_times)
    return result if with_error else result.value


class EnergyEstimate(NamedTuple):
    """A Monte-Carlo kinetic energy: `value` +- `stderr`, and the per-time densities (1/d) E||u_t||^2 at `times`.

    `quadrature_error` estimates the time-quadrature error (|Q_h - Q_2h| of the tanh-sinh rule on the same draws).
    """

    value: Array
    stderr: Array
    times: Array
    density: Array
    density_stderr: Array
    quadrature_error: Array


def marginal_kinetic_energy(
    key: Key,
    schedule: AbstractSchedule,
    data: Array,
    *,
    num_times: int = 33,
    num_samples: int = 256,
    block_data: int = 1024,
    tol: float = 1e-2,
) -> EnergyEstimate:
    """Marginal kinetic energy E = (1/d) int_0^1 E_{x ~ p_t} ||u_t(x)||^2 dt (Eq. 18) on a finite dataset.

    u_t(x) = a' E[x1 | x] + m' E[x0 | x] with the exact posterior over the dataset (Eq. 17); with x = a x1 + m x0
    and s = a/m, E[x0 | x] = x0 + s (x1 - E[x1 | x]) (no division by m). Tanh-sinh quadrature in t (nodes crowd at
    both ends, where VP's density spikes), `num_samples` draws of (x1, x0) per node.

    Args:
        key: PRNG key. schedule: an affine schedule. data: (n, *shape), normalised (checked when concrete).
        num_times, num_samples, block_data: static ints.
    Returns:
        `EnergyEstimate` (value, stderr, times (T,), density (T,), density_stderr (T,), quadrature_error).
    """
    check_normalised(data, tol)
    flat = jnp.asarray(data, dtype=jnp.result_type(data, float))
    flat = flat.reshape(flat.shape[0], -1)
    n, d = flat.shape
    t_np, w_np, wc_np = _tanh_sinh(num_times)
    times, weights = jnp.asarray(t_np, flat.dtype), jnp.asarray(w_np, flat.dtype)
    a, m, da, dm = _coefficients(schedule, times)

    def one_time(args):
        k, a_k, m_k, da_k, dm_k = args
        k_idx, k_eps = jax.random.split(k)
        x1 = flat[jax.random.randint(k_idx, (num_samples,), 0, n)]
        x0 = jax.random.normal(k_eps, (num_samples, d), flat.dtype)
        s = a_k / m_k
        mu = _posterior_means(flat, x1, x0, jnp.full((1, num_samples), s), block_data)[0]
        u = da_k * mu + dm_k * (x0 + s * (x1 - mu))
        return jnp.sum(u**2, axis=-1) / d

    keys = jax.random.split(key, times.shape[0])
    values = jax.lax.map(one_time, (keys, a, m, da, dm))  # (T, num_samples)
    density = values.mean(axis=1)
    density_se = values.std(axis=1, ddof=1) / math.sqrt(num_samples)
    value = jnp.sum(weights * density)
    stderr = jnp.sqrt(jnp.sum((weights * density_se) ** 2))
    quad_error = jnp.abs(value - jnp.sum(jnp.asarray(wc_np, flat.dtype) * density))
    return EnergyEstimate(value, stderr, times, density, density_se, quad_error)


class KineticEnergy(NamedTuple):
    """Marginal (Eq. 18, Monte Carlo +- stderr) and conditional (Eq. 20) kinetic energy of one schedule."""

    marginal: Array
    marginal_stderr: Array
    conditional: Array


def kinetic_energy(
    key: Key, schedule: AbstractSchedule, data: Array, *, num_times: int = 33, num_samples: int = 256
) -> KineticEnergy:
    """Marginal (Eq. 18) and conditional (Eq. 20) kinetic energies of an affine schedule on a normalised dataset.

    By Eq. 21, marginal = conditional - int beta^2 (1 - lambda) <= conditional; see `separation_kinetic_energy`.
    """
    est = marginal_kinetic_energy(key, schedule, data, num_times=num_times, num_samples=num_samples)
    return KineticEnergy(est.value, est.stderr, conditional_kinetic_energy(schedule))


_MOVED_TO_PATHS = ("KOFit", "KineticOptimal", "fit_ko_schedule", "ko_schedule")


def __getattr__(name: str):
    # The KO schedule lives in `fm_jax.paths.kinetic_optimal` (it imports this module, hence the lazy lookup);
    # `fm_jax.kinetic.ko_schedule` and friends keep working where users find them today.
    if name in _MOVED_TO_PATHS:
        from .paths import kinetic_optimal

        return getattr(kinetic_optimal, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EnergyEstimate",
    "FittedSeparation",
    "KineticEnergy",
    "Quadrature",
    "SeparationEstimate",
    "check_normalised",
    "conditional_kinetic_energy",
    "data_separation",
    "fit_data_separation",
    "gaussian_separation",
    "kinetic_energy",
    "marginal_kinetic_energy",
    "minimise_kinetic_energy",
    "normalise_data",
    "separation_kinetic_energy",
    "separation_to_gamma",
]
