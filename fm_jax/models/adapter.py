"""The one adapter between Flax NNX modules and the functional world of the trainer, sampler and Orbax."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from .._typing import Array, Params, PyTree


def as_apply(model: nnx.Module) -> tuple[Callable[[Params, PyTree[Array], Array], Array], Params]:
    """Split an NNX model into a pure `apply(params, z, t)` and its parameter pytree.

    `params` holds the `nnx.Param` state as a plain nested dict of arrays (what the optimiser updates and Orbax
    stores); any other state (e.g. RNG counters) is frozen into `apply`. `apply` accepts a scalar `t` and
    broadcasts it over the batch.

    Returns:
        apply: `apply(params, z, t) -> prediction`, z batched (B, ...) or a pytree of such arrays, t () or (B,).
        params: the model's parameters as a plain pytree of arrays.
    """
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)

    def apply(params: Params, z: PyTree[Array], t: Array) -> Array:
        # A fresh copy of the state template, filled with `params` (never mutate the template itself).
        state = jax.tree_util.tree_map(lambda x: x, param_state)
        nnx.replace_by_pure_dict(state, params)
        module = nnx.merge(graphdef, state, rest)
        t = jnp.asarray(t)
        if t.ndim == 0:
            batch = jnp.shape(jax.tree_util.tree_leaves(z)[0])[0]
            t = jnp.broadcast_to(t, (batch,))
        return module(z, t)

    return apply, nnx.to_pure_dict(param_state)

