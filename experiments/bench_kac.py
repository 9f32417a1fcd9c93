"""Benchmark and accuracy table of the Kac velocity and sampler (`make bench`).

    python -m experiments.bench_kac --config experiments/configs/bench_kac.py --workdir results   # bench_kac.json

`run()` returns a dict: throughput (elements/s) of the jitted float32 `fm_jax.kac.velocity` and of a float64
NumPy/SciPy evaluation of the same formula (`reference_velocity`) in the same process, their ratio, the max
relative error of the float32 velocity against that reference on a dense grid of the light cone (by region),
and the throughput (draws/s) of the exact sampler `fm_jax.kac.sample`.
"""

from __future__ import annotations

import json
import os
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from experiments import common
from fm_jax import kac


def reference_velocity(s, x, a, c, atoms_at=None) -> np.ndarray:
    """float64 NumPy/SciPy Kac velocity v = x / (s + (r/c) I0(z)/I1(z)) (i0e, i1e), +-c on and outside |x| = cs.

    Independent of `fm_jax.kac` (the paper's formula as written, with the Taylor ratio for z < 1e-3).
    `atoms_at`: where the atoms sit if not at the exact c s (float32 callers place them at the float32 product
    fl(c s); a point at or beyond it is an atom).
    """
    s, x, a, c = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (s, x, a, c)))
    ax = np.abs(x)
    r2 = (c * s - ax) * (c * s + ax)
    inside = r2 > 0
    if atoms_at is not None:
        inside &= ax < np.asarray(atoms_at, np.float64)
    r = np.sqrt(np.where(inside, r2, 0.0))
    z = a * r / c
    w = z * z
    zb = np.maximum(z, 1e-3)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_big = (r / c) * special.i0e(zb) / special.i1e(zb)
    # (r/c) I0/I1 = (z I0/I1) / a, and z I0/I1 = I0 / (I1/z) = (1 + w/4 + w^2/64) / (1/2 + w/16 + w^2/384) + O(w^3).
    ratio_small = (1 + w / 4 + w * w / 64) / (0.5 + w / 16 + w * w / 384) / a
    ratio = np.where(z < 1e-3, ratio_small, ratio_big)
    with np.errstate(divide="ignore", invalid="ignore"):
        v_in = x / (s + ratio)
    return np.where(inside, v_in, np.sign(x) * c)


def plain_bessel_velocity(s, x, a, c):
    """The straightforward jitted form x / (s + (r/c) i0e(z)/i1e(z)) (the baseline the rational form replaces)."""
    r = jnp.sqrt(jnp.maximum(c * c * s * s - x * x, 0.0))
    z = jnp.maximum(a * r / c, 1e-6)
    ratio = jax.scipy.special.i0e(z) / jax.scipy.special.i1e(z)
    return jnp.where(jnp.abs(x) < c * s, x / (s + (r / c) * ratio), jnp.sign(x) * c)


def cone_regions(n: int = 200_000, seed: int = 0) -> dict[str, tuple[np.ndarray, ...]]:
    """Dense float32 test sets (s, x, a, c) by region of the closed light cone |x| <= c s.

    a in [0.1, 1e3], c in [0.1, 10] log-uniform unless stated; every set holds exactly representable float32
    inputs, so the float64 reference sees the same numbers.
    """
    rng = np.random.default_rng(seed)
    logu = lambda lo, hi, size=n: np.exp(rng.uniform(np.log(lo), np.log(hi), size))  # noqa: E731
    f32 = lambda *v: tuple(np.asarray(u, np.float32) for u in v)  # noqa: E731
    a, c = logu(0.1, 1e3), logu(0.1, 10.0)
    u = rng.uniform(-1.0, 1.0, n)
    sgn = np.where(u < 0, -1.0, 1.0)
    s = logu(1e-3, 10.0)
    out = {
        "interior (s in [1e-3, 10])": f32(s, u * c * s, a, c),
        "s -> 0 (s in [1e-12, 1e-3])": f32(s2 := logu(1e-12, 1e-3), u * c * s2, a, c),
        "near cone (1 - |x|/cs in [1e-7, 1e-2])": f32(s, sgn * c * s * (1.0 - logu(1e-7, 1e-2)), a, c),
        "z -> 0 (z in [1e-6, 1e-1])": None,
        "large z (a s up to 1e4)": f32(np.ones(n), u * c, logu(10.0, 1e4), c),
        "x -> 0 (|x| / cs in [0, 1e-6])": f32(s, u * 1e-6 * c * s, a, c),
        "on the cone (atoms, |x| = cs)": None,
        "grid a=9, c=3": None,
    }
    # z -> 0: choose z, then x = sqrt(c^2 s^2 - (c z / a)^2) (near the cone, or at small a s anywhere).
    z = logu(1e-6, 1e-1)
    s3 = logu(1e-3, 10.0)
    a3 = np.minimum(a, 1e3)
    x3 = sgn * np.sqrt(np.maximum((c * s3) ** 2 - (c * z / a3) ** 2, 0.0))
    out["z -> 0 (z in [1e-6, 1e-1])"] = f32(s3, x3, a3, c)
    s4, c4 = f32(s, c)
    out["on the cone (atoms, |x| = cs)"] = f32(s4, sgn * (s4.astype(np.float64) * c4), a, c4)
    grid_s, grid_x = np.meshgrid(np.geomspace(1e-6, 100.0, 500), np.linspace(-1.0, 1.0, 401))
    out["grid a=9, c=3"] = f32(
        grid_s.ravel(), 3.0 * grid_s.ravel() * grid_x.ravel(), np.full(grid_s.size, 9.0), np.full(grid_s.size, 3.0)
    )
    return out


def accuracy_table(n: int = 200_000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Max relative error of float32 `kac.velocity` vs `reference_velocity` per region, NaN/Inf counts, |v| <= c."""
    f = jax.jit(kac.velocity)
    table = {}
    for name, (s, x, a, c) in cone_regions(n, seed).items():
        v32 = np.asarray(f(s, x, a, c))
        v64 = reference_velocity(s, x, a, c, atoms_at=c * s)  # float32 product: where float32 atoms sit
        scale = np.maximum(np.abs(v64), 1e-30)
        rel = np.abs(v32.astype(np.float64) - v64) / scale
        table[name] = {
            "points": int(s.size),
            "max_rel_err": float(rel.max()),
            "median_rel_err": float(np.median(rel)),
            "nonfinite": int(np.size(v32) - np.count_nonzero(np.isfinite(v32))),
            "max_abs_over_c": float(np.max(np.abs(v32) / c)),
        }
    return table


def _throughput(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def run(n: int = 1 << 22, repeats: int = 7, n_draws: int = 1 << 18) -> dict:
    """Velocity throughput (float32 jit vs float64 NumPy/SciPy), accuracy table and sampler throughput."""
    rng = np.random.default_rng(0)
    s = rng.uniform(0.0, 1.0, n).astype(np.float32)
    x = (rng.uniform(-1.0, 1.0, n) * 3.0 * s).astype(np.float32)
    a, c = np.float32(9.0), np.float32(3.0)
    vel = jax.jit(kac.velocity)
    sj, xj = jnp.asarray(s), jnp.asarray(x)
    t_jax = _throughput(vel, (sj, xj, a, c), repeats)
    t_plain = _throughput(jax.jit(plain_bessel_velocity), (sj, xj, a, c), repeats)
    t_ref = _throughput(lambda *v: reference_velocity(*v), (s, x, a, c), max(2, repeats // 3))
    v32 = np.asarray(vel(sj, xj, a, c)).astype(np.float64)
    v64 = reference_velocity(s, x, a, c, atoms_at=c * s)
    rel = np.abs(v32 - v64) / np.maximum(np.abs(v64), 1e-30)

    sampler = jax.jit(lambda key, s_: kac.sample(key, s_, 9.0, 3.0, (n_draws,)))
    t_sample = {}
    for s_value in (1.0, 111.1):  # a s = 9 and a s = 1e3
        t_sample[f"a*s={9.0 * s_value:g}"] = n_draws / _throughput(
            sampler, (jax.random.key(0), jnp.float32(s_value)), max(2, repeats // 2)
        )
    return {
        "velocity_elements": n,
        "velocity_f32_jit_elements_per_s": n / t_jax,
        "velocity_f32_plain_i0e_i1e_jit_elements_per_s": n / t_plain,
        "velocity_speedup_over_plain_i0e_i1e": t_plain / t_jax,
        "velocity_f64_numpy_scipy_elements_per_s": n / t_ref,
        "velocity_speedup_f32_over_f64_ref": t_ref / t_jax,
        "velocity_max_rel_err_bench_set": float(rel.max()),
        "velocity_accuracy_by_region": accuracy_table(),
        "sampler_draws_per_s": t_sample,
        "devices": [str(d) for d in jax.devices()],
    }


def main(config, workdir: str) -> None:
    args = types.SimpleNamespace(out=os.path.join(workdir, "bench_kac.json"))
    result = run()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    common.run(main, "experiments/configs/bench_kac.py", "results")
