"""The one adapter between Flax NNX modules and the functional world of the trainer, sampler and Orbax.

The model interface every trainer, loss and sampler of fm_jax calls is

    apply(params, z, t, cond=None, *, key=None) -> prediction

- `z`: the batched state (B, ...) or a pytree of such arrays; `t`: () or (B,) (a scalar is broadcast).
- `cond`: optional conditioning (class labels (B,) or any batched pytree), passed to the model as its third
  argument; `None` means unconditional (classifier-free guidance uses a model-specific "null" condition,
  handled by the model itself).
- `key`: `None` is evaluation mode (dropout and any other stochastic layer off, deterministic); a PRNG key is
  training mode, with every stochastic layer drawing from that key. Trainers pass a fresh per-step key
  (`fold_in(state.key, step)`), so masks change every step.

`as_apply` returns an `NNXApply`: a frozen `equinox.Module` whose fields are all static, hence hashable and
equal for two models of the same architecture. Compiled train steps and samplers keyed on it (by `jax.jit`
static arguments or `functools.cache`) are therefore shared between models without hand-made cache keys.

`mixed_precision(apply)` wraps any such `apply` to compute in bfloat16 while parameters, optimiser state and
gradients stay float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx

from .._typing import Array, Key, Params, PyTree


def _is_key(leaf) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key)


class NNXApply(eqx.Module):
    """`apply(params, z, t, cond=None, *, key=None)` for one NNX architecture (hashable: only static fields).

    Built by `as_apply`. `train_graph` / `eval_graph` are the model's graph with stochastic layers on / off; the
    RNG state (dropout streams) is rebuilt at every call from `key`, so nothing random is frozen in.
    """

    train_graph: Any = eqx.field(static=True)
    eval_graph: Any = eqx.field(static=True)
    rng_treedef: Any = eqx.field(static=True)
    rng_is_key: tuple[bool, ...] = eqx.field(static=True)
    param_treedef: Any = eqx.field(static=True)
    param_avals: tuple[jax.ShapeDtypeStruct, ...] = eqx.field(static=True)  # shapes/dtypes of the nnx.Param leaves

    def _rng_state(self, key: Key | None):
        # Every RNG stream gets its own key folded from `key`; counts restart at 0. In evaluation mode no layer
        # draws, and a fixed key only fills the slots.
        base = jax.random.key(0) if key is None else key
        leaves = [
            jax.random.fold_in(base, i) if is_key else jnp.zeros((), jnp.uint32)
            for i, is_key in enumerate(self.rng_is_key)
        ]
        return jax.tree_util.tree_unflatten(self.rng_treedef, leaves)

    def __call__(
        self, params: Params, z: PyTree[Array], t: Array, cond: PyTree[Array] | None = None, *, key: Key | None = None
    ) -> PyTree[Array]:
        zeros = [jnp.zeros(a.shape, a.dtype) for a in self.param_avals]
        state = jax.tree_util.tree_unflatten(self.param_treedef, zeros)
        try:
            nnx.replace_by_pure_dict(state, params)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"params do not match this model's parameter structure: {err}") from None
        graph = self.eval_graph if key is None else self.train_graph
        module = nnx.merge(graph, state, self._rng_state(key))
        t = jnp.asarray(t)
        if t.ndim == 0:
            batch = jnp.shape(jax.tree_util.tree_leaves(z)[0])[0]
            t = jnp.broadcast_to(t, (batch,))
        return module(z, t) if cond is None else module(z, t, cond)


def as_apply(model: nnx.Module) -> tuple[NNXApply, Params]:
    """Split an NNX model into a pure, hashable `apply(params, z, t, cond=None, *, key=None)` and its params.

    `params` holds the `nnx.Param` state as a plain nested dict of arrays (what the optimiser updates and Orbax
    stores). The model may hold `nnx.Rngs` (for dropout); any other non-parameter state (e.g. batch statistics)
    is refused, since `apply` is pure and could not update it.

    Returns:
        apply: an `NNXApply`; z batched (B, ...) or a pytree of such arrays, t () or (B,).
        params: the model's parameters as a plain pytree of arrays.
    """
    _, param_state, rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    if jax.tree_util.tree_leaves(rest):
        raise ValueError(
            f"{type(model).__name__} holds state that is neither nnx.Param nor RNG state "
            f"({sorted(str(p) for p, _ in nnx.to_flat_state(rest))[:3]} ...); as_apply supports stateless models"
        )
    model.train()
    train_graph = nnx.graphdef(model)
    model.eval()
    eval_graph = nnx.graphdef(model)
    model.train()
    rng_leaves, rng_treedef = jax.tree_util.tree_flatten(rng_state)
    param_leaves, param_treedef = jax.tree_util.tree_flatten(param_state)
    apply = NNXApply(
        train_graph=train_graph,
        eval_graph=eval_graph,
        rng_treedef=rng_treedef,
        rng_is_key=tuple(_is_key(leaf) for leaf in rng_leaves),
        param_treedef=param_treedef,
        param_avals=tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in param_leaves),
    )
    return apply, nnx.to_pure_dict(param_state)


def _cast_floating(tree: PyTree, dtype) -> PyTree:
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree
    )


def mixed_precision(
    apply: Callable, compute_dtype=jnp.bfloat16, output_dtype=jnp.float32, *, cast_time: bool = False
) -> Callable:
    """Wrap `apply(params, z, t, cond=None, *, key=None)` to compute in `compute_dtype` with float32 parameters.

    Floating parameters and state are cast to `compute_dtype` inside the call and the prediction is cast back to
    `output_dtype`, so the loss, the gradients (the transpose of a cast is a cast) and the optimiser update stay in
    float32. bfloat16 has float32's exponent range: no loss scaling is needed.

    Time is left in its own dtype unless `cast_time`: a sinusoidal embedding sin(2π f t) with f up to 64 needs
    angles of ~400 rad, which bfloat16 (8-bit mantissa) rounds by ~1 rad; a model should compute its time
    embedding in float32 and cast the embedding, not t.
    """

    @functools.wraps(apply)
    def wrapped(params: Params, z: PyTree[Array], t: Array, cond: Any = None, *, key=None) -> Any:
        t = jnp.asarray(t)
        out = apply(_cast_floating(params, compute_dtype), _cast_floating(z, compute_dtype),
                    t.astype(compute_dtype) if cast_time else t, cond, key=key)
        return _cast_floating(out, output_dtype)

    return wrapped
