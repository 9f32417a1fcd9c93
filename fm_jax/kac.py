"""The 1-D Kac process: its law, the velocity of its flow, and an exact sampler.

A particle starts at 0, moves at speed `c` in a uniformly random direction and reverses direction at the
jumps of a Poisson process of rate `a`; `K_s` is its position at process time (clock) `s >= 0`. Its law
(Duong, Chemseddine, Friz, Steidl, "Telegrapher's Generative Model via Kac Flows", arXiv 2506.20641, Eq. 20) is

    mu_s = (e^{-a s} / 2) (delta_{-c s} + delta_{c s}) + p_s(x) 1_{|x| < c s} dx,
    p_s(x) = (a e^{-a s} / (2 c)) [I_0(z) + c s I_1(z) / r],   r = sqrt(c^2 s^2 - x^2),   z = a r / c,

and the velocity of the flow that transports the Dirac at 0 along `mu_s` is

    v(s, x) = c x I_1(z) / (r I_0(z) + c s I_1(z)) = a x / (a s + h(z)),   h(z) = z I_0(z) / I_1(z),

with `v = +-c` on the atoms `x = +-c s`. All functions here use the clock `s` of the process (not the path time
t of `fm_jax.paths`), are elementwise with broadcasting, and are jit/vmap/grad-safe in float32 and float64.

Numerics (why the code looks the way it does):
- `h` is an even analytic function of z, so everything is written in `w = z^2 = (a/c)^2 (c s - |x|)(c s + |x|)`,
  which is a polynomial in (s, x): no square root of `c^2 s^2 - x^2` is ever differentiated, gradients are
  finite up to and across the light cone, and `jax.grad` never meets `i0`/`i1` at 0 (whose JAX derivative rule
  is wrong there). Where Bessel functions are used, a branch-safe `where` evaluates them at `max(w, w0)` and a
  Taylor series below `w0`.
- `c s - |x|` is computed with an error-free product (Dekker's splitting), so the velocity near the light cone
  does not inherit the rounding of `c * s`: the condition number of `v` with respect to that difference grows
  like `1 / sqrt(1 - |x| / (c s))` when `a s` is large.
- float32 velocity: `h(z) = 1/2 + sqrt(w + q(w))` with a (5, 5) rational minimax fit `q` (weighted relative
  error of `h` below 1e-7 on z in [0, 1e4]; `q` runs from 9/4 at z = 0 to 3/4 as z -> inf, the Amos-bound
  form `I_1/I_0 ~ z / (1/2 + sqrt(z^2 + q))`). Why: it costs one division and one square root where
  `z i0e(z) / i1e(z)` evaluates two Chebyshev series on two branches each; on the 2-core CI CPU the jitted
  float32 velocity runs ~5x faster than that plain form (`experiments/bench_kac.py` measures both) at
  float32 accuracy (max relative error vs a float64 SciPy evaluation ~3e-7 over the whole cone). Its
  derivative has its own rule (`custom_jvp`): dh/dw = (1 + q'(w)) / (2 sqrt(w + q)), with q' from its own
  Horner recurrence, because reverse-mode differentiation of the rational's Horner loops loses ~1e-4 in float32.
- float64 velocity and all densities: exponentially scaled Bessel functions `i0e`, `i1e` for `z >= 0.1` and
  their Taylor series (to w^4) below, accurate to ~1e-15 relative. float16/bfloat16 inputs are computed in
  float32 and the result cast back.
- Atoms sit at the rounded product fl(c s) (where `sample` puts them); `velocity` gives them speed c exactly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import is_concrete
from ._typing import Array, ArrayLike, Key

# q(w) = P(w / 10) / Q(w / 10): weighted minimax fit of (h(z) - 1/2)^2 - z^2 (see module docstring).
_Q_NUM = (
    2.25,
    2.6057357529770986,
    1.8843550178425057,
    0.73943582019523268,
    0.12525300337239439,
    1.7836503776433095e-03,
)
_Q_DEN = (1.0, 2.2692059649967784, 1.9701092206211095, 0.8115920882910196, 0.1577931650311652, 0.00235588285507348)
_W_SCALE = 10.0
_W_CLAMP = 1e8  # beyond z = 1e4, q is held at its value there (1e-4 from exact): h changes by < 1e-12 relative
_W_SERIES = 1e-2  # below this w (z < 0.1) the Bessel functions are replaced by their Taylor series
_GAMMA_MAX_ROUNDS = 64  # bound of the Gamma rejection loop (each round accepts with probability >= 0.95)
_MAX_RATE = 2.0**30  # largest Poisson mean a s sampled: counts are int32 (JAX saturates them at 2^31 - 1)


def _float_dtype(*args):
    return jnp.result_type(*args, float)


def _compute_dtype(dtype):
    """float64 stays float64; float32 and narrower floats are computed in float32 (and cast back)."""
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _check_params(s=None, a=None, c=None):
    """ValueError for a <= 0, c <= 0 or s < 0 (only where the values are concrete)."""
    for value, name, strict in ((a, "a (switching rate)", True), (c, "c (speed)", True), (s, "s (Kac clock)", False)):
        if value is None or not is_concrete(value):
            continue
        arr = np.asarray(value)
        bad = ~np.isfinite(arr) | ((arr <= 0) if strict else (arr < 0))
        if np.any(bad):
            need = "positive and finite" if strict else "non-negative and finite"
            raise ValueError(f"Kac {name} must be {need}, got {arr[bad].ravel()[:4].tolist()}")


def _two_prod(c, s):
    """(p, e) with p = fl(c s) and p + e = c s exactly (Dekker's product with Veltkamp splitting, no FMA)."""
    p = c * s
    split = 4097.0 if c.dtype == jnp.float32 else 134217729.0  # 2^12 + 1, 2^27 + 1

    def halves(u):
        t = split * u
        hi = t - (t - u)
        return hi, u - hi

    ch, cl = halves(c)
    sh, sl = halves(s)
    e = ((ch * sh - p) + ch * sl + cl * sh) + cl * sl
    # The exact derivative of e is 0; differentiating the splitting would amplify rounding by the split factor.
    return p, jax.lax.stop_gradient(e)


def _cone(s, x, a, c):
    """(inside, w): inside = |x| < c s, w = z^2 = (a/c)^2 (c s - |x|)(c s + |x|) >= 0 (accurate near the cone).

    A point counts as inside when it is below both the exact c s and its rounded product fl(c s): the sampler's
    atoms sit at fl(c s), which may fall one rounding short of the exact product, and must get speed c.
    """
    ax = jnp.abs(x)
    cs, cs_err = _two_prod(c, s)
    gap = (cs - ax) + cs_err  # cs - ax is exact when ax is near cs (Sterbenz), so gap is accurate to 1 ulp
    inside = (gap > 0) & (ax < cs)
    ratio = a / c
    w = ratio * ratio * jnp.maximum(gap, 0.0) * (cs + ax)
    return inside, w


def _bessel_series(w):
    """(I_0(z), I_1(z) / z) from their Taylor series in w = z^2 (4 terms beyond the constant)."""
    u = 0.25 * w
    i0 = 1.0 + u * (1.0 + u * (0.25 + u * (1.0 / 36.0 + u * (1.0 / 576.0))))
    i1_over_z = 0.5 * (1.0 + u * (0.5 + u * (1.0 / 12.0 + u * (1.0 / 144.0 + u * (1.0 / 2880.0)))))
    return i0, i1_over_z


def _h_bessel(w):
    """h(z) = z I_0(z) / I_1(z) as a function of w = z^2 (Bessel ratio for z >= 0.1, series below)."""
    small = w < _W_SERIES
    z = jnp.sqrt(jnp.maximum(w, _W_SERIES))  # branch-safe: the unused branch never sees z = 0
    h_big = z * jax.scipy.special.i0e(z) / jax.scipy.special.i1e(z)
    i0, i1z = _bessel_series(jnp.minimum(w, _W_SERIES))
    return jnp.where(small, i0 / i1z, h_big)


def _rational_q(w):
    """(q, dq/dw): the rational fit q(w) = P(w/10) / Q(w/10) and its derivative (Horner for value and slope)."""
    u = jnp.minimum(w, _W_CLAMP) * (1.0 / _W_SCALE)
    num, den = jnp.full_like(u, _Q_NUM[5]), jnp.full_like(u, _Q_DEN[5])
    dnum, dden = jnp.zeros_like(u), jnp.zeros_like(u)
    for k in range(4, -1, -1):
        dnum = dnum * u + num
        dden = dden * u + den
        num = num * u + _Q_NUM[k]
        den = den * u + _Q_DEN[k]
    q = num / den
    dq = jnp.where(w < _W_CLAMP, (dnum - q * dden) / (den * _W_SCALE), 0.0)
    return q, dq


@jax.custom_jvp
def _h_fast(w):
    """h(z) = z I_0(z) / I_1(z) = 1/2 + sqrt(w + q(w)) with the rational fit q (float32 accuracy).

    The derivative rule dh/dw = (1 + q'(w)) / (2 sqrt(w + q)) evaluates q' by its own Horner recurrence:
    reverse-mode differentiation of the Horner loops of numerator and denominator cancels ~1e-4 relative in
    float32 at large w, which this rule avoids (it is linear in the tangent, so `jax.grad` uses it too).
    """
    u = jnp.minimum(w, _W_CLAMP) * (1.0 / _W_SCALE)
    num, den = _Q_NUM[5], _Q_DEN[5]
    for k in range(4, -1, -1):
        num = num * u + _Q_NUM[k]
        den = den * u + _Q_DEN[k]
    return 0.5 + jnp.sqrt(w + num / den)


@_h_fast.defjvp
def _h_fast_jvp(primals, tangents):
    (w,), (dw,) = primals, tangents
    q, dq = _rational_q(w)
    root = jnp.sqrt(w + q)
    return 0.5 + root, (1.0 + dq) / (2.0 * root) * dw


def atom_mass(s: ArrayLike, a: ArrayLike) -> Array:
    """Total mass e^{-a s} of the two atoms of Law(K_s) at +-c s (probability of no switch before s).

    Args:
        s: Kac clock, >= 0 (any shape, broadcasts with `a`).
        a: switching rate, > 0.
    Returns:
        e^{-a s}, broadcast shape.
    """
    _check_params(s=s, a=a)
    dtype = _float_dtype(s, a)
    return jnp.exp(-jnp.asarray(a, dtype) * jnp.asarray(s, dtype))


def density(s: ArrayLike, x: ArrayLike, a: ArrayLike, c: ArrayLike) -> Array:
    """Density of the absolutely continuous part of Law(K_s) (paper Eq. 20, as corrected upstream).

        p_s(x) = (a / (2 c)) e^{z - a s} [i0e(z) + a s i1e(z) / z]   for |x| < c s,   0 otherwise,

    the exponentially scaled form of `(a e^{-a s} / (2c)) [I_0(z) + c s I_1(z) / r]`; the exponent
    `z - a s = -(a/c) x^2 / (r + c s) <= 0` is computed without cancellation. It integrates to `1 - e^{-a s}`.

    Args:
        s, x, a, c: Kac clock (>= 0), position, switching rate (> 0), speed (> 0); broadcast together.
    Returns:
        p_s(x), broadcast shape.
    """
    _check_params(s=s, a=a, c=c)
    dtype = _float_dtype(s, x, a, c)
    work = _compute_dtype(dtype)
    return _density(*(jnp.asarray(v, work) for v in (s, x, a, c))).astype(dtype)


@jax.jit
def _density(s, x, a, c):
    inside, w = _cone(s, x, a, c)
    small = w < _W_SERIES
    # series branch: e^{-a s} I_0, e^{-a s} I_1 / z
    i0, i1z = _bessel_series(jnp.minimum(w, _W_SERIES))
    p_small = jnp.exp(-a * s) * (i0 + a * s * i1z)
    # Bessel branch (z >= 0.1), evaluated at a safe w
    ws = jnp.maximum(w, _W_SERIES)
    z = jnp.sqrt(ws)
    r = z * (c / a)
    cs = c * s
    expo = -(a / c) * (x * x) / (r + cs)
    p_big = jnp.exp(expo) * (jax.scipy.special.i0e(z) + a * s * jax.scipy.special.i1e(z) / z)
    p = 0.5 * (a / c) * jnp.where(small, p_small, p_big)
    return jnp.where(inside, p, jnp.zeros_like(p))


def velocity(s: ArrayLike, x: ArrayLike, a: ArrayLike, c: ArrayLike) -> Array:
    """Velocity of the 1-D Kac flow started at a Dirac at 0 (paper §2.4; +-c on the atoms).

        v(s, x) = c x I_1(z) / (r I_0(z) + c s I_1(z)) = a x / (a s + h(z)),   h(z) = z I_0(z) / I_1(z),

    for |x| < c s; `sign(x) c` for |x| >= c s (the atoms, and outside the support, as the reference code clamps).
    The atoms are at the rounded product fl(c s) (where `sample` puts them), even when it is one rounding short.
    Properties: odd in x, |v| < c inside the cone, v -> c a s / (a s + 2) as x -> c s from inside,
    v ~ x / (s + 2/a) for small z. float32 uses the rational form of `h`, float64 the Bessel ratio (module
    docstring).

    Args:
        s, x, a, c: Kac clock (>= 0), position, switching rate (> 0), speed (> 0); broadcast together.
    Returns:
        v(s, x), broadcast shape, in the common floating dtype of the inputs.
    """
    _check_params(s=s, a=a, c=c)
    dtype = _float_dtype(s, x, a, c)
    work = _compute_dtype(dtype)
    return _velocity(*(jnp.asarray(v, work) for v in (s, x, a, c))).astype(dtype)


@jax.jit
def _velocity(s, x, a, c):
    inside, w = _cone(s, x, a, c)
    h = _h_fast(w) if s.dtype == jnp.float32 else _h_bessel(w)
    v_in = a * x / (a * s + h)
    return jnp.where(inside, v_in, jnp.sign(x) * c)


def variance(s: ArrayLike, a: ArrayLike, c: ArrayLike) -> Array:
    """Var K_s = (c^2 / a) [s - (1 - e^{-2 a s}) / (2 a)]  (= 2 c^2 s^2 phi(2 a s), phi(u) = (u - 1 + e^{-u}) / u^2).

    The phi form avoids the cancellation at small `a s` (ballistic regime, Var ~ c^2 s^2).

    Args:
        s, a, c: Kac clock (>= 0), switching rate (> 0), speed (> 0); broadcast together.
    Returns:
        Var K_s, broadcast shape.
    """
    _check_params(s=s, a=a, c=c)
    dtype = _float_dtype(s, a, c)
    s, a, c = (jnp.asarray(v, _compute_dtype(dtype)) for v in (s, a, c))
    u = 2.0 * a * s
    small = u < 1.0
    ub = jnp.maximum(u, 1.0)
    phi_big = (ub + jnp.expm1(-ub)) / (ub * ub)
    # phi(u) = sum_k (-u)^k / (k + 2)!, 18 terms: truncation < 1 / 20! ~ 4e-19 for u < 1.
    us = jnp.minimum(u, 1.0)
    phi_small = jnp.zeros_like(us)
    for k in range(17, -1, -1):
        phi_small = phi_small * (-us) + 1.0 / math.factorial(k + 2)
    return (2.0 * c * c * s * s * jnp.where(small, phi_small, phi_big)).astype(dtype)


def sample(key: Key, s: ArrayLike, a: ArrayLike, c: ArrayLike, shape: tuple[int, ...] = ()) -> Array:
    """Exact draws of K_s, computed inside the compiled graph (no tables), for any `a s`.

    Derivation. Let N ~ Poisson(a s) be the number of switches before s and B a uniform sign (first direction).
    Given N = n, the switching times are the order statistics of n uniforms on [0, s], so the n + 1 spacings
    are s times a flat Dirichlet(1, ..., 1) vector. The particle moves in direction B during spacings
    0, 2, 4, ..., i.e. floor(n/2) + 1 of them; a sum of j coordinates of a flat Dirichlet of n + 1 coordinates is
    Beta(j, n + 1 - j). Hence, with tau the time spent moving in direction B,

        tau / s | N = n  ~  Beta(floor(n/2) + 1, ceil(n/2)),     K_s = B c (tau - (s - tau)) = B c s (2 tau/s - 1),

    and N = 0 gives the atoms K_s = B c s (probability e^{-a s}). Poisson draws (transformed rejection for large
    means) and Beta draws (a ratio of two Gamma draws, Marsaglia-Tsang) are exact, so the sampler is exact for
    every `a s` up to 2^30 (~1e9); its cost does not grow with `a s`.

    Every loop inside is bounded for every input, under `jax.jit` too: values that are out of range but not
    checkable (traced NaN, s < 0, a <= 0, c <= 0, or a s > 2^30) give NaN draws; concrete ones raise ValueError.

    Args:
        key: PRNG key.
        s, a, c: Kac clock (>= 0), switching rate (> 0), speed (> 0); must broadcast to `shape`.
        shape: output shape.
    Returns:
        Draws of shape `shape` in the floating dtype of (s, a, c).
    """
    _check_params(s=s, a=a, c=c)
    dtype = _float_dtype(s, a, c)
    work = _compute_dtype(dtype)
    shape = tuple(shape)
    return _sample(key, *(jnp.broadcast_to(jnp.asarray(v, work), shape) for v in (s, a, c)), shape=shape).astype(dtype)


def _gamma_at_least_one(key: Key, shape_param: Array) -> Array:
    """Exact Gamma(alpha, 1) draws for alpha >= 1 (Marsaglia & Tsang 2000), one vectorised rejection loop.

    With d = alpha - 1/3, x ~ N(0, 1) and y = x / sqrt(9 d), v = (1 + y)^3 is accepted when v > 0 and
    log U < x^2 / 2 + d - d v + d log v; then d v ~ Gamma(alpha). Acceptance is >= 95 % for every alpha >= 1,
    so the loop ends after a few rounds. Lighter to compile than `jax.random.beta` (two general Gamma samplers).
    The exponent equals 3 d (log(1 + y) - y + y^2/2 - y^3/3) exactly, which is evaluated instead: written as
    given it cancels catastrophically for large d (in float32 it is wrong by ~d * 1e-7, so shapes of ~1e8, i.e.
    a s ~ 1e8, were almost never accepted).

    The loop is bounded for every input: a shape that is NaN, infinite or below 1 is NaN from the start (it
    would never be accepted), and at most `_GAMMA_MAX_ROUNDS` rounds run; a draw still rejected then (probability
    below 0.05^64 ~ 5e-84 per element) is NaN rather than biased.
    """
    d = shape_param - 1.0 / 3.0
    valid = jnp.isfinite(shape_param) & (shape_param >= 1.0)
    d = jnp.where(valid, d, 1.0)  # the rejection step never sees an invalid shape
    scale = jax.lax.rsqrt(9.0 * d)

    def cond(state):
        return (state[0] < _GAMMA_MAX_ROUNDS) & ~jnp.all(state[3])

    def body(state):
        rounds, key, out, done = state
        key, k_normal, k_uniform = jax.random.split(key, 3)
        x = jax.random.normal(k_normal, d.shape, d.dtype)
        u = jax.random.uniform(k_uniform, d.shape, d.dtype)
        y = scale * x
        positive = y > -1.0
        accept = positive & (jnp.log(u) < 3.0 * d * _log1p_remainder(jnp.where(positive, y, 0.0)))
        return rounds + 1, key, jnp.where(accept & ~done, d * (1.0 + y) ** 3, out), done | accept

    init = (jnp.zeros((), jnp.int32), key, jnp.full_like(d, jnp.nan), ~valid)
    return jax.lax.while_loop(cond, body, init)[2]


def _log1p_remainder(y: Array) -> Array:
    """log(1 + y) - y + y^2/2 - y^3/3 for y > -1, without cancellation (series -y^4/4 + y^5/5 - ... for |y| < 1/4).

    The direct form beyond |y| = 1/4 loses at most ~250 ulps relative; there y = x / sqrt(9 d) means |x| > 3/4 sqrt(d),
    so the absolute error of the exponent 3 d R stays at the rounding level wherever a draw is likely.
    """
    small = jnp.abs(y) < 0.25
    ys = jnp.where(small, y, 0.0)
    series = jnp.zeros_like(ys)
    for k in range(33, 3, -1):  # 30 terms: truncation below 0.25^30 ~ 1e-18 relative
        series = series * ys + (1.0 if k % 2 else -1.0) / k
    direct = jnp.log1p(y) - y + y * y * (0.5 - y / 3.0)
    return jnp.where(small, series * ys**4, direct)


@functools.partial(jax.jit, static_argnames="shape")
def _sample(key, s, a, c, shape):
    # Compiled once per shape and dtype: eager callers would otherwise re-dispatch the Poisson and Gamma loops.
    dtype = s.dtype
    k_n, k_g, k_sign = jax.random.split(key, 3)
    # Out-of-range values (NaN, s < 0, a <= 0, c <= 0, a s beyond int32 counts) give NaN, never a hang: JAX's
    # Poisson sampler returns -1 for a negative or NaN mean (a Gamma shape of 0, never accepted) and loops ~2^31
    # times for an infinite one, so it only ever sees a valid mean.
    rate = a * s
    valid = (s >= 0) & (a > 0) & (c > 0) & jnp.isfinite(c) & jnp.isfinite(rate) & (rate <= _MAX_RATE)
    n = jax.random.poisson(k_n, jnp.where(valid, rate, 0.0), shape)
    half = n // 2
    # tau / s = G1 / (G1 + G2) ~ Beta(floor(n/2) + 1, ceil(n/2)); both shapes >= 1 (n = 0 is replaced below).
    shapes = jnp.stack([half + 1, jnp.maximum(n - half, 1)]).astype(dtype)
    g1, g2 = _gamma_at_least_one(k_g, shapes)
    direction = jnp.where(n == 0, jnp.ones_like(g1), (g1 - g2) / (g1 + g2))  # = 2 tau / s - 1
    sign = jax.random.rademacher(k_sign, shape, dtype)
    return jnp.where(valid, sign * c * s * direction, jnp.nan)


__all__ = ["atom_mass", "density", "sample", "variance", "velocity"]
