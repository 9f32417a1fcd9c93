"""Every loop of the library under `jax.jit` with NaN and out-of-range inputs; prints one JSON line of results.

Run in a subprocess with a timeout by `tests/test_bounded_loops.py`, so that a loop that never ends fails the
test instead of stalling the suite. Each case records whether every output is NaN and whether every one is finite.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from fm_jax import kac
from fm_jax.kac import _gamma_at_least_one
from fm_jax.paths import VP, AffinePath, KacPath, QuadraticClock

KEY = jax.random.key(0)
X1 = jnp.ones(6)


def _summary(out) -> dict:
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(out)]
    return {"all_nan": all(bool(np.all(np.isnan(v))) for v in leaves),
            "finite": all(bool(np.all(np.isfinite(v))) for v in leaves)}


def main() -> None:
    results = {}
    conditional = jax.jit(lambda path, t: path.sample_conditional(KEY, X1, t))
    for name, t in [("t=1.5", 1.5), ("t=f32(1.0000001)", np.float32(1.0000001)), ("t=nan", np.nan), ("t=-0.1", -0.1)]:
        results[f"KacPath.sample_conditional {name}"] = _summary(conditional(KacPath(), t))
    # g(s) = T (s/T)^2 maps the negative clock of t = 1.5 to a positive one: the path itself must refuse it.
    results["KacPath(QuadraticClock).sample_conditional t=1.5"] = _summary(
        conditional(KacPath(clock=QuadraticClock()), 1.5))
    results["KacPath.conditional_velocity t=1.5"] = _summary(
        jax.jit(lambda t: KacPath().conditional_velocity(X1, X1, t))(1.5))
    # Traced hyper-parameters: the constructor's check cannot see them, the sampler must not hang.
    results["KacPath a=-1 sample_conditional"] = _summary(
        jax.jit(lambda a: conditional(KacPath(a=a), 0.5))(-1.0))
    results["KacPath T=-1 sample_source"] = _summary(jax.jit(lambda T: KacPath(T=T).sample_source(KEY, (6,)))(-1.0))
    draw = jax.jit(lambda s, a, c: kac.sample(KEY, s, a, c, (16,)))
    for name, args in [("s=-0.5", (-0.5, 9.0, 3.0)), ("s=nan", (np.nan, 9.0, 3.0)), ("s=inf", (np.inf, 9.0, 3.0)),
                       ("a s=1e13", (1e12, 9.0, 3.0)), ("a=-1", (1.0, -1.0, 3.0)), ("a=0", (1.0, 0.0, 3.0)),
                       ("c=nan", (1.0, 9.0, np.nan)), ("a=inf", (1.0, np.inf, 3.0))]:
        results[f"kac.sample {name}"] = _summary(draw(*args))
    results["kac.sample a s=9e8 (in range)"] = _summary(draw(1e8, 9.0, 3.0))
    gamma = jax.jit(lambda alpha: _gamma_at_least_one(KEY, alpha))
    for name, alpha in [("nan", np.nan), ("0", 0.0), ("0.5", 0.5), ("-inf", -np.inf), ("inf", np.inf)]:
        results[f"kac gamma shape={name}"] = _summary(gamma(jnp.full((8,), alpha)))
    # A fixed-length loop: it ends for any input (its value for NaN is not NaN: see the test).
    inverse = jax.jit(lambda snr: AffinePath(VP()).schedule.snr_inverse(snr))
    results["AffinePath(VP).snr_inverse nan"] = _summary(inverse(np.nan))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
