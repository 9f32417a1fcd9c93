"""Input validation that speaks the user's language.

Checks run on concrete (non-traced) values only, so they cost nothing inside a compiled step and never force a
host sync; under `jax.jit` the caller is responsible for values, and shapes (always static) are still checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when every leaf of `x` has a value now (not a tracer inside jit/vmap/grad)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_scalar_time(t, name: str = "t") -> jax.Array:
    """Return `t` as an array after checking it is a scalar in [0, 1] (the value only where concrete)."""
    t = jnp.asarray(t)
    if t.ndim != 0:
        raise ValueError(
            f"{name} must be a scalar (shape ()), got shape {t.shape}: path functions see one example; "
            "batch them with jax.vmap"
        )
    if is_concrete(t):
        value = float(t)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1] (t=0 is the source, t=1 the data), got {value}")
    return t


def check_positive(value, name: str) -> None:
    """Raise ValueError if a concrete hyper-parameter is not strictly positive and finite."""
    if is_concrete(value):
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be positive and finite, got {arr.tolist()}")


def check_finite(x, name: str = "batch") -> None:
    """Raise ValueError naming `name` if a concrete array holds NaN or Inf."""
    if is_concrete(x):
        for leaf in jax.tree_util.tree_leaves(x):
            arr = np.asarray(leaf)
            if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def check_same_shape(a, b, name_a: str, name_b: str) -> None:
    """Raise ValueError if two arrays (or pytrees) differ in structure or shape."""
    sa = jax.tree_util.tree_map(jnp.shape, a)
    sb = jax.tree_util.tree_map(jnp.shape, b)
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b) or sa != sb:
        raise ValueError(f"{name_a} has shape {sa} but {name_b} has shape {sb}; they must match")
