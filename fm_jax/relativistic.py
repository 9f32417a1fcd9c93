"""Special-relativistic point mechanics with a speed limit that survives floating point.

Symbols: velocity `v`, speed of light `c > 0`, rest mass `m > 0`, beta = |v| / c, Lorentz factor
`gamma = 1 / sqrt(1 - beta^2) = sqrt(1 + |p|^2 / (m c)^2)`, momentum `p = gamma m v`, force `F = dp/dt`
(Cao et al. 2025, "Force Matching with Relativistic Constraints", arXiv 2502.08150; standard physics).

Splitting F into the part along v and the part across it gives (the form the paper's code uses)
    a = F_par / (m gamma^3) + F_perp / (m gamma),
equivalently a = (F - (F . beta) beta) / (gamma m) with beta = v / c, which needs no unit vector v / |v| and so
is defined at v = 0.

Why momentum: an explicit Euler step on the velocity, v <- v + a dt, can leave the ball |v| < c for a large
force or step, and 1 / sqrt(1 - |v|^2 / c^2) then turns into NaN (or Inf at |v| = c). `relativistic_step`
integrates the momentum instead, p <- p + F dt, and reads the velocity off p:
    v = p / (m gamma) = c q / hypot(m c / s, |q|),   s = max_i |p_i|,  q = p / s,
which keeps |v| < c for every finite p, any force and any step size. The scaling by s means |p|^2 is never
formed, so nothing overflows as |p| -> infinity (float32 and bfloat16 share the exponent range ~3.4e38).

Floating-point guarantees (proved by construction, checked in tests/test_relativistic.py):
  - outputs are computed in at least float32 (bfloat16 / float16 inputs are promoted) and cast back rounding
    toward zero, so a rounded speed never exceeds the exact one;
  - `velocity_from_momentum` returns |v| <= c (1 - 8 eps) in the compute dtype, which absorbs the rounding
    of the norm itself, so |v| <= c holds for the returned values; infinite momentum entries are treated as
    the largest finite value (and NaN stays NaN);
  - `lorentz_factor` clamps 1 - beta^2 at the smallest normal number (gamma <= ~1e19 in float32), so a
    velocity at (or, through rounding, past) c gives a large finite gamma, never Inf or NaN;
  - `lorentz_factor_from_momentum` is finite up to |p| / (m c) ~ 3e38 and clamped at the dtype's maximum
    beyond.

Vectors live on the trailing `axis` (an int or tuple of ints, default -1); leading axes are batch axes.
Hyper-parameters `c` and `m` may be Python floats or arrays (pytree leaves); concrete values are checked to be
positive and finite (ValueError otherwise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._checks import check_positive
from ._typing import Array, ArrayLike

Axis = int | tuple[int, ...]

# Relative safety margin (in units of the compute dtype's eps) kept below c; it covers the rounding of |q|
# (pairwise summation: O(log d) eps) and of the final products.
_SPEED_MARGIN_EPS = 8.0


def _axes(axis: Axis) -> tuple[int, ...]:
    return (axis,) if isinstance(axis, int) else tuple(axis)


def _compute_dtype(*xs) -> jnp.dtype:
    # Low-precision inputs are computed in float32; float64 stays float64.
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _out_dtype(x) -> jnp.dtype:
    dt = jnp.result_type(x)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


def _check_params(c, m) -> None:
    check_positive(c, "speed of light c")
    check_positive(m, "rest mass m")


def _round_toward_zero(x: Array, dtype) -> Array:
    """Cast `x` to `dtype` so that |result| <= |x| elementwise (a bound on |x| survives the cast)."""
    y = x.astype(dtype)
    if jnp.dtype(dtype) == x.dtype:
        return y
    too_big = jnp.abs(y.astype(x.dtype)) > jnp.abs(x)
    return jnp.where(too_big, jnp.nextafter(y, jnp.zeros_like(y)), y)


def _clip_finite(x: Array) -> Array:
    """Map +-Inf to the largest finite value of the dtype (NaN stays NaN)."""
    big = jnp.finfo(x.dtype).max
    return jnp.clip(x, -big, big)


def _scaled_norm(x: Array, axes: tuple[int, ...]) -> tuple[Array, Array, Array]:
    """|x| as s * n without squaring x: s = max |x_i| (kept dims), q = x / s, n = |q| in [1, sqrt(d)] (or 0).

    Safe for autodiff at x = 0 (the double-where keeps NaN out of the unused branch).
    """
    s = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    pos = s > 0
    s_safe = jnp.where(pos, s, jnp.ones_like(s))
    # Divide twice by sqrt(s): XLA may lower x / s to x * (1 / s), and 1 / s is subnormal (flushed to 0) once
    # s exceeds ~8.5e37 in float32; 1 / sqrt(s) never is.
    r = jnp.sqrt(s_safe)
    q = (x / r) / r
    n2 = jnp.sum(q * q, axis=axes, keepdims=True)
    n = jnp.where(n2 > 0, jnp.sqrt(jnp.where(n2 > 0, n2, jnp.ones_like(n2))), jnp.zeros_like(n2))
    return s_safe, q, n


def _gamma_from_beta_vec(b: Array, axes: tuple[int, ...]) -> Array:
    """gamma = 1 / sqrt((1 - beta)(1 + beta)) for beta = |b|, clamped finite; kept dims."""
    s, _, n = _scaled_norm(b, axes)
    beta = s * n
    one_minus = jnp.maximum((1.0 - beta) * (1.0 + beta), jnp.finfo(b.dtype).tiny)
    return jax.lax.rsqrt(one_minus)


def lorentz_factor(v: ArrayLike, c: ArrayLike, *, axis: Axis = -1) -> Array:
    """Lorentz factor gamma(v) = 1 / sqrt(1 - |v|^2 / c^2) of velocities `v`.

    Computed as 1 / sqrt((1 - beta)(1 + beta)) with beta = |v / c| (no |v|^2 formed); 1 - beta^2 is clamped at
    the smallest normal number, so |v| = c (or a rounding past it) gives a large finite value, not Inf/NaN.

    Args:
        v: velocities, shape (..., d) (vector on `axis`).
        c: speed of light, scalar > 0.
        axis: the vector axis (or axes).
    Returns:
        gamma, shape (...) (the vector axes removed), in v's floating dtype.
    """
    _check_params(c, 1.0)
    v = jnp.asarray(v)
    cd = _compute_dtype(v, c)
    axes = _axes(axis)
    g = _gamma_from_beta_vec(v.astype(cd) / jnp.asarray(c, cd), axes)
    g = jnp.minimum(g, jnp.finfo(_out_dtype(v)).max.astype(cd))
    return jnp.squeeze(g, axis=axes).astype(_out_dtype(v))


def lorentz_factor_from_momentum(p: ArrayLike, c: ArrayLike, m: ArrayLike = 1.0, *, axis: Axis = -1) -> Array:
    """Lorentz factor from momentum, gamma = sqrt(1 + |p|^2 / (m c)^2) = hypot(1, |p| / (m c)).

    Evaluated as hypot(1, (s / (m c)) |q|) with s = max |p_i|, q = p / s, so |p|^2 never overflows; the
    result is finite up to |p| / (m c) ~ 3e38 and clamped at the dtype's maximum beyond.

    Args:
        p: momenta, shape (..., d). c: speed of light > 0. m: rest mass > 0. axis: the vector axis.
    Returns:
        gamma >= 1, shape (...).
    """
    _check_params(c, m)
    p = jnp.asarray(p)
    cd = _compute_dtype(p, c, m)
    axes = _axes(axis)
    s, _, n = _scaled_norm(_clip_finite(p.astype(cd)), axes)
    # |p| / (m c) = (s / (m c)) n; may overflow to Inf for absurd momenta, clamped below.
    g = jnp.hypot(jnp.ones_like(n), (s / (jnp.asarray(m, cd) * jnp.asarray(c, cd))) * n)
    out = _out_dtype(p)
    g = jnp.where(jnp.isnan(g), g, jnp.minimum(g, jnp.asarray(jnp.finfo(out).max, cd)))
    return jnp.squeeze(g, axis=axes).astype(out)


def momentum_from_velocity(v: ArrayLike, c: ArrayLike, m: ArrayLike = 1.0, *, axis: Axis = -1) -> Array:
    """Relativistic momentum p = gamma(v) m v.

    gamma as in `lorentz_factor` (clamped finite at |v| >= c), so the result is finite for every finite v.

    Args:
        v: velocities with |v| < c, shape (..., d). c: speed of light > 0. m: rest mass > 0. axis: vector axis.
    Returns:
        p, shape (..., d), in v's floating dtype.
    """
    _check_params(c, m)
    v = jnp.asarray(v)
    cd = _compute_dtype(v, c, m)
    axes = _axes(axis)
    vc = v.astype(cd)
    g = _gamma_from_beta_vec(vc / jnp.asarray(c, cd), axes)
    p = g * jnp.asarray(m, cd) * vc
    out = _out_dtype(v)
    return _clip_finite(p.astype(out))


def velocity_from_momentum(p: ArrayLike, c: ArrayLike, m: ArrayLike = 1.0, *, axis: Axis = -1) -> Array:
    """Velocity v = p / (m gamma) = p / sqrt(m^2 + |p|^2 / c^2); |v| < c for every finite p.

    Evaluated without forming |p|^2: with s = max_i |p_i| and q = p / s,
        v = q / hypot(m / s, |q| / c),
    which is p / m (Newton) when |p| << m c and c p / |p| when |p| >> m c. The speed factor |q| / hypot(m c / s, |q|)
    is capped at 1 - 8 eps so that rounding cannot lift |v| past c; the cast back to a low-precision input dtype
    rounds toward zero. Infinite momentum entries count as the dtype's largest finite value.

    Args:
        p: momenta, shape (..., d). c: speed of light > 0. m: rest mass > 0. axis: the vector axis.
    Returns:
        v, shape (..., d), in p's floating dtype, with |v| <= c.
    """
    _check_params(c, m)
    p = jnp.asarray(p)
    cd = _compute_dtype(p, c, m)
    axes = _axes(axis)
    c_ = jnp.asarray(c, cd)
    s, q, n = _scaled_norm(_clip_finite(p.astype(cd)), axes)
    n_over_c = n / c_
    margin = 1.0 - _SPEED_MARGIN_EPS * jnp.finfo(cd).eps
    # v = q / hypot(m / s, |q| / c); the floor |q| / (c margin) keeps the speed |q| / den <= c * margin.
    den = jnp.maximum(jnp.hypot(jnp.asarray(m, cd) / s, n_over_c), n_over_c / margin)
    v = q / den
    return _round_toward_zero(v, _out_dtype(p))


def acceleration_from_force(
    force: ArrayLike, v: ArrayLike, c: ArrayLike, m: ArrayLike = 1.0, *, axis: Axis = -1
) -> Array:
    """Coordinate acceleration a = dv/dt produced by a force F on a particle moving with velocity v.

    a = F_par / (m gamma^3) + F_perp / (m gamma), F_par = (F . v_hat) v_hat, F_perp = F - F_par
      = (F - (F . beta) beta) / (gamma m),  beta = v / c   (paper §3; the code's a_para + a_perp).
    The second form needs no v / |v|, so v = 0 is fine (a = F / m there).

    Args:
        force: F, shape (..., d). v: velocity, |v| < c, shape (..., d). c, m: > 0. axis: the vector axis.
    Returns:
        a, shape (..., d).
    """
    _check_params(c, m)
    force, v = jnp.asarray(force), jnp.asarray(v)
    cd = _compute_dtype(force, v, c, m)
    axes = _axes(axis)
    b = v.astype(cd) / jnp.asarray(c, cd)
    f = force.astype(cd)
    g = _gamma_from_beta_vec(b, axes)
    # Scale F by its largest entry so F . beta cannot overflow for huge forces.
    sf, fq, _ = _scaled_norm(f, axes)
    fb = jnp.sum(fq * b, axis=axes, keepdims=True)
    a = ((fq - fb * b) / (g * jnp.asarray(m, cd))) * sf
    return a.astype(_out_dtype(jnp.result_type(force, v)))


def split_force(force: ArrayLike, v: ArrayLike, *, axis: Axis = -1) -> tuple[Array, Array]:
    """Split F into the parts parallel and perpendicular to v: (F_par, F_perp) with F = F_par + F_perp.

    At v = 0 there is no direction: F_par = 0 and F_perp = F.

    Args:
        force, v: shape (..., d). Returns two arrays of shape (..., d).
    """
    force, v = jnp.asarray(force), jnp.asarray(v)
    axes = _axes(axis)
    _, vq, vn = _scaled_norm(v, axes)
    vhat = jnp.where(vn > 0, vq / jnp.where(vn > 0, vn, 1.0), 0.0)
    f_par = jnp.sum(force * vhat, axis=axes, keepdims=True) * vhat
    return f_par, force - f_par


def perpendicular_2d(u: ArrayLike) -> Array:
    """Rotate 2-D vectors by +90 degrees: (u1, u2) -> (-u2, u1). Shape (..., 2)."""
    u = jnp.asarray(u)
    if u.shape[-1] != 2:
        raise ValueError(f"perpendicular_2d needs vectors of size 2 on the last axis, got shape {u.shape}")
    return jnp.stack([-u[..., 1], u[..., 0]], axis=-1)


def force_from_magnitudes(f_par: ArrayLike, f_perp: ArrayLike, v: ArrayLike) -> Array:
    """The paper's 2-D force from signed magnitudes: F = f_par v_hat + f_perp v_hat_perp.

    v_hat = v / |v| and v_hat_perp its +90 degree rotation; at v = 0 there is no direction and F = 0 (the
    reference code divides by |v| + 1e-8, which gives the same 0).

    Args:
        f_par, f_perp: magnitudes, shape (...) or (..., 1). v: velocities, shape (..., 2).
    Returns:
        F, shape (..., 2).
    """
    v = jnp.asarray(v)
    if v.shape[-1] != 2:
        raise ValueError(f"force_from_magnitudes is 2-D: v must have shape (..., 2), got {v.shape}")
    f_par, f_perp = jnp.asarray(f_par), jnp.asarray(f_perp)
    if f_par.ndim == v.ndim - 1:
        f_par = f_par[..., None]
    if f_perp.ndim == v.ndim - 1:
        f_perp = f_perp[..., None]
    _, vq, vn = _scaled_norm(v, (-1,))
    vhat = jnp.where(vn > 0, vq / jnp.where(vn > 0, vn, 1.0), 0.0)
    return f_par * vhat + f_perp * perpendicular_2d(vhat)


def acceleration_from_magnitudes(
    f_par: ArrayLike, f_perp: ArrayLike, v: ArrayLike, c: ArrayLike, m: ArrayLike = 1.0
) -> Array:
    """The paper's 2-D acceleration a = f_par v_hat / (m gamma^3) + f_perp v_hat_perp / (m gamma).

    Same as `acceleration_from_force(force_from_magnitudes(f_par, f_perp, v), v, c, m)`, written in the
    reference code's form (gamma clamped finite as in `lorentz_factor`).
    """
    _check_params(c, m)
    v = jnp.asarray(v)
    g = lorentz_factor(v, c)[..., None]
    f = force_from_magnitudes(f_par, f_perp, v)
    f_par_vec, f_perp_vec = split_force(f, v)
    return f_par_vec / (m * g**3) + f_perp_vec / (m * g)


def relativistic_step(
    x: ArrayLike, p: ArrayLike, force: ArrayLike, dt: ArrayLike, c: ArrayLike, m: ArrayLike = 1.0,
    *, axis: Axis = -1,
) -> tuple[Array, Array]:
    """One step of (x, p) under a force, keeping |dx/dt| < c for any force and any step size.

        p' = p + F dt,   x' = x + (v(p) + v(p')) dt / 2,   v(p) = `velocity_from_momentum(p, c, m)`.

    The position update is the trapezoid rule of the reference code, applied to velocities read off the
    momentum, so each position increment is at most c |dt|; the momentum update is an explicit (Euler) kick,
    exact for a constant force. Infinite momenta after the kick are clamped to the largest finite value.

    Args:
        x, p: position and momentum, shape (..., d). force: F, shape (..., d). dt: step (scalar or
        broadcastable). c, m: > 0. axis: the vector axis.
    Returns:
        (x', p'), each in its input's dtype.
    """
    _check_params(c, m)
    x, p, force = jnp.asarray(x), jnp.asarray(p), jnp.asarray(force)
    cd = _compute_dtype(x, p, force, c, m)
    pc = _clip_finite(p.astype(cd))
    p_new = _clip_finite(pc + force.astype(cd) * jnp.asarray(dt, cd))
    v_old = velocity_from_momentum(pc, c, m, axis=axis)
    v_new = velocity_from_momentum(p_new, c, m, axis=axis)
    x_new = x.astype(cd) + 0.5 * (v_old + v_new) * jnp.asarray(dt, cd)
    return x_new.astype(_out_dtype(x)), _clip_finite(p_new.astype(_out_dtype(p)))


__all__ = [
    "acceleration_from_force",
    "acceleration_from_magnitudes",
    "force_from_magnitudes",
    "lorentz_factor",
    "lorentz_factor_from_momentum",
    "momentum_from_velocity",
    "perpendicular_2d",
    "relativistic_step",
    "split_force",
]
