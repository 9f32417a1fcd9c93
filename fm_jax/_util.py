"""Small helpers shared by several library modules (one copy each)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._typing import Array


def as_float_array(x) -> Array:
    """`x` as an array of the default float dtype (float32, or float64 under x64): the converter of every
    array-valued hyper-parameter field, so hyper-parameters are pytree leaves and never recompile."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


def scalar_jvp(fn: Callable[[Array], object], t) -> tuple[object, object]:
    """(fn(t), d fn / dt) at a scalar `t` by one forward-mode `jax.jvp` (fn may return a pytree)."""
    t = jnp.asarray(t)
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))


def scalar_derivative(fn: Callable[[Array], object], t) -> object:
    """d fn / dt at a scalar `t` (the tangent of `scalar_jvp`)."""
    return scalar_jvp(fn, t)[1]
