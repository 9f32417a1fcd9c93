"""Input validation that speaks the user's language, with an opt-in checked mode that works under jit and vmap.

Which checks run where:
- Shapes and structure (scalar t, matching shapes) are static and always checked, traced or not.
- Values (t in [0, 1], positive hyper-parameters, finite batches) are checked on concrete inputs, i.e. in eager
  calls and at the Python level of a compiled function, with a `ValueError` naming the problem.
- Traced values (inside `jax.jit`, `jax.vmap`, `jax.grad`, `lax.scan`) are not checked by default: the default
  adds nothing to the compiled program, so no recompilation and no host sync. In **checked mode** the time
  check (`check_scalar_time`, used by every path's `sample_conditional`) and `check_finite` insert
  `equinox.error_if` into the program, so a batched or compiled call with t = 1.5 or NaN raises a runtime error
  naming the argument (under vmap, if any element is bad). Hyper-parameter checks stay concrete-only (they are
  construction-time checks of a module's fields).

Checked mode is off unless the environment variable `FM_JAX_CHECKS=1` is set before import, or code runs inside
`with fm_jax.checks():` (or `fm_jax.checks(False)` to turn it off locally). Like `EQX_ON_ERROR`, the setting is
read when a function is traced: a function compiled with checks off keeps no checks when later called inside
`fm_jax.checks()` (and vice versa), so enable it before the first call, or wrap the call in a fresh `jax.jit`.

Example:
    >>> with fm_jax.checks():
    ...     jax.jit(jax.vmap(path.sample_conditional))(keys, x1, t)   # raises if any t lies outside [0, 1]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_CHECKED = os.environ.get("FM_JAX_CHECKS", "0").strip().lower() not in ("", "0", "false", "no", "off")


def checks_enabled() -> bool:
    """True when checked mode is on (traced values are checked with `equinox.error_if`)."""
    return _CHECKED


@contextlib.contextmanager
def checks(enabled: bool = True) -> Iterator[None]:
    """Context manager turning checked mode on (or off with `enabled=False`) for the functions traced inside it."""
    global _CHECKED
    previous, _CHECKED = _CHECKED, bool(enabled)
    try:
        yield
    finally:
        _CHECKED = previous


def is_concrete(x) -> bool:
    """True when every leaf of `x` has a value now (not a tracer inside jit/vmap/grad)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_scalar_time(t, name: str = "t") -> jax.Array:
    """Return `t` as an array after checking it is a scalar in [0, 1].

    The value is checked where concrete, and also where traced in checked mode (`fm_jax.checks`); use the
    returned array, which carries the traced check.
    """
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
    elif _CHECKED:
        # NaN fails both comparisons, so it is caught too.
        t = eqx.error_if(t, ~((t >= 0.0) & (t <= 1.0)),
                         f"{name} must lie in [0, 1] (t=0 is the source, t=1 the data); got a value outside it or NaN")
    return t


def check_positive(value, name: str) -> None:
    """Raise ValueError if a concrete hyper-parameter is not strictly positive and finite."""
    if is_concrete(value):
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be positive and finite, got {arr.tolist()}")


def check_finite(x, name: str = "batch"):
    """Return `x` after checking it holds no NaN or Inf: ValueError where concrete; in checked mode, a runtime
    error where traced (use the returned pytree, which carries the traced check)."""
    if is_concrete(x):
        for leaf in jax.tree_util.tree_leaves(x):
            arr = np.asarray(leaf)
            if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")
        return x
    if not _CHECKED:
        return x
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(x) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    if not leaves:
        return x
    bad = jnp.any(jnp.stack([~jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
    return eqx.error_if(x, bad, f"{name} contains non-finite values (NaN or Inf)")


def check_same_shape(a, b, name_a: str, name_b: str) -> None:
    """Raise ValueError if two arrays (or pytrees) differ in structure or shape."""
    sa = jax.tree_util.tree_map(jnp.shape, a)
    sb = jax.tree_util.tree_map(jnp.shape, b)
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b) or sa != sb:
        raise ValueError(f"{name_a} has shape {sa} but {name_b} has shape {sb}; they must match")
