"""Training: a `TrainState` pytree, Optax optimisers, and a pure train step (jitted, or scanned K steps a call).

The step is a pure function `(state, batch, path) -> (state, metrics)`. The path (or any pytree the loss reads)
is an argument, not a closure, so changing a hyper-parameter value reuses the compiled step. Per-step keys are
`fold_in(state.key, state.step)`. A step whose loss or gradients are not finite leaves parameters, optimiser state
and EMA untouched and counts itself in `metrics["skipped"]`: training never writes NaN parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._typing import Array, Key, Params, PyTree

LossFn = Callable[[Params, Key, PyTree[Array], Any], tuple[Array, dict[str, Array]]]


class TrainState(eqx.Module):
    """Everything a training run carries between steps (a pytree; Orbax-friendly: the key is raw uint32 data)."""

    step: Array
    params: Params
    opt_state: optax.OptState
    ema_params: Params
    key_data: Array

    @property
    def key(self) -> Key:
        return jax.random.wrap_key_data(self.key_data)


def init_train_state(key: Key, params: Params, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh `TrainState` at step 0 with EMA parameters equal to `params`.

    `params` are copied: the compiled steps donate the state's buffers, which must not be the caller's arrays.
    """
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=jax.tree_util.tree_map(jnp.copy, params),
        opt_state=optimizer.init(params),
        ema_params=jax.tree_util.tree_map(jnp.copy, params),
        key_data=jax.random.key_data(key),
    )


def make_optimizer(
    learning_rate: float = 1e-3,
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    final_lr_fraction: float = 0.0,
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
) -> optax.GradientTransformation:
    """Adam (or AdamW when `weight_decay > 0`) with gradient-norm clipping and a warm-up + cosine schedule.

    With `total_steps`, the rate rises linearly over `warmup_steps` and follows a cosine to
    `final_lr_fraction * learning_rate` at `total_steps`; without it, it warms up and stays constant.
    """
    if total_steps is not None:
        decay_steps = max(total_steps, warmup_steps + 1)
        end = learning_rate * final_lr_fraction
        lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 0), decay_steps, end)
    elif warmup_steps > 0:
        lr = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    else:
        lr = learning_rate
    if weight_decay > 0:
        opt = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        opt = optax.adam(lr, b1=b1, b2=b2)
    return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if clip_norm else opt


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def apply_gradients(
    state: TrainState, loss: Array, grads: Params, optimizer: optax.GradientTransformation, ema_decay: float
) -> tuple[TrainState, Array]:
    """One optimiser + EMA update; skipped (state returned unchanged but for the step) if anything is non-finite.

    Returns (new_state, skipped) with skipped a 0/1 int32.
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
    ok = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(params)
    # One branch select for the whole update (cheaper to compile and run than a `where` per leaf).
    params, opt_state, ema = jax.lax.cond(
        ok, lambda: (params, opt_state, ema), lambda: (state.params, state.opt_state, state.ema_params)
    )
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema, key_data=state.key_data
    )
    return new_state, (~ok).astype(jnp.int32)


def train_step(
    state: TrainState,
    batch: PyTree[Array],
    path: Any,
    *,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    ema_decay: float = 0.999,
) -> tuple[TrainState, dict[str, Array]]:
    """One pure training step: loss and gradients at `fold_in(key, step)`, optimiser update, EMA.

    Args:
        state: the current `TrainState`. batch: a pytree of batched arrays. path: any pytree the loss reads.
        loss_fn: `loss_fn(params, key, batch, path) -> (loss, metrics)`.
    Returns:
        (new_state, metrics) with metrics from the loss plus `grad_norm` and `skipped`.
    """
    key = jax.random.fold_in(state.key, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, batch, path)
    new_state, skipped = apply_gradients(state, loss, grads, optimizer, ema_decay)
    return new_state, {**metrics, "grad_norm": optax.tree.norm(grads), "skipped": skipped}


def check_host_batch(batch: PyTree[Array]) -> None:
    """Raise ValueError if a host (NumPy) batch holds NaN/Inf; device arrays are left alone (no host sync)."""
    for i, leaf in enumerate(jax.tree_util.tree_leaves(batch)):
        if isinstance(leaf, np.ndarray) and np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
            bad = int(leaf.size - np.count_nonzero(np.isfinite(leaf)))
            raise ValueError(f"batch leaf {i} (shape {leaf.shape}) contains {bad} non-finite value(s) (NaN or Inf)")


def make_train_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, *, ema_decay: float = 0.999, check_inputs: bool = True
):
    """`jax.jit` of `train_step` with the state buffer donated: `step(state, batch, path) -> (state, metrics)`.

    With `check_inputs`, host (NumPy) batches are checked for NaN/Inf before dispatch (a clear error instead of
    a skipped step); inside the compiled step, non-finite losses or gradients skip the update either way.
    """

    def step(state, batch, path):
        return train_step(state, batch, path, loss_fn=loss_fn, optimizer=optimizer, ema_decay=ema_decay)

    jitted = jax.jit(step, donate_argnums=0)
    if not check_inputs:
        return jitted

    def checked(state, batch, path):
        check_host_batch(batch)
        return jitted(state, batch, path)

    return checked


def make_scan_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, ema_decay: float = 0.999):
    """K steps per compiled call over stacked batches: `steps(state, batches, path)`, batches (K, B, ...).

    Returns metrics stacked along a leading K axis. One dispatch and no host sync for K steps.
    """

    def steps(state, batches, path):
        def body(s, batch):
            return train_step(s, batch, path, loss_fn=loss_fn, optimizer=optimizer, ema_decay=ema_decay)

        return jax.lax.scan(body, state, batches)

    return jax.jit(steps, donate_argnums=0)


def make_train_loop(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    batch_fn: Callable[[Key], PyTree[Array]],
    *,
    steps_per_call: int,
    ema_decay: float = 0.999,
):
    """K steps per compiled call with batches drawn in-graph: `loop(state, path) -> (state, metrics (K,))`.

    `batch_fn(key) -> batch` generates data on device (the toy generators of `fm_jax.data.toy` do), keyed by
    `fold_in(fold_in(state.key, step), 1)` so data and loss randomness never share a key.
    """

    def loop(state, path):
        def body(s, _):
            batch = batch_fn(jax.random.fold_in(jax.random.fold_in(s.key, s.step), 1))
            return train_step(s, batch, path, loss_fn=loss_fn, optimizer=optimizer, ema_decay=ema_decay)

        return jax.lax.scan(body, state, None, length=steps_per_call)

    return jax.jit(loop, donate_argnums=0)
