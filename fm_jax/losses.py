"""Training objectives: flow-matching regression and the time samplers it draws t from.

Single-example inside (`path.sample_conditional` sees one `x1` and one `t`), vmapped over the batch; the model
is batched. The regression target is held fixed (`stop_gradient`): gradients reach only the model.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import check_same_shape
from ._typing import Array, Key, Params, PyTree
from .paths.base import AbstractPath


class AbstractTimeSampler(eqx.Module):
    """A law of t on [0, 1] for the regression loss."""

    @abc.abstractmethod
    def sample(self, key: Key, n: int) -> Array:
        """n draws of t, shape (n,)."""


class UniformTime(AbstractTimeSampler):
    """t ~ U[0, 1]; `stratified=True` draws one t per stratum [i/n, (i+1)/n) (lower-variance loss, as in VDM)."""

    stratified: bool = eqx.field(static=True, default=False)

    def sample(self, key, n):
        u = jax.random.uniform(key, (n,))
        if self.stratified:
            return (jnp.arange(n) + u) / n
        return u


class LogitNormalTime(AbstractTimeSampler):
    """t = sigmoid(mean + std·N(0, 1)) (Esser et al. 2024, SD3): more weight on intermediate times."""

    mean: Array = eqx.field(converter=jnp.asarray, default=0.0)
    std: Array = eqx.field(converter=jnp.asarray, default=1.0)

    def sample(self, key, n):
        return jax.nn.sigmoid(self.mean + self.std * jax.random.normal(key, (n,)))


def _squared_error(prediction: PyTree[Array], target: PyTree[Array]) -> Array:
    """Per-example sum of squared errors over all leaves: (B,)."""
    per_leaf = lambda p, q: jnp.sum(((p - q) ** 2).reshape(p.shape[0], -1), axis=-1)
    sq = jax.tree_util.tree_map(per_leaf, prediction, target)
    return sum(jax.tree_util.tree_leaves(sq))


def flow_matching_loss(
    params: Params,
    key: Key,
    x1: Array,
    path: AbstractPath,
    *,
    apply: Callable,
    time_sampler: AbstractTimeSampler = UniformTime(),
    weighting: Callable[[Array], Array] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Flow-matching regression E_t E_{z_t, target | x1} [ w(t) ||model(z_t, t) − target||² ].

    Args:
        params: model parameters; `apply(params, z, t, cond=None, *, key=None)` is the batched model
            (`fm_jax.models.as_apply`); it is called in training mode, with a key of its own.
        key: PRNG key (split into the time draws, one key per example, and the model's key).
        x1: a batch of data (B, *d).
        path: any `AbstractPath`; passed as an argument (not closed over) so one compiled step serves every
            hyper-parameter value.
        time_sampler: the law of t. weighting: optional w(t) (B,) -> (B,).
    Returns:
        (loss, {"loss": loss}) with loss the batch mean of the weighted per-example squared error (summed over
        dimensions).
    """
    batch = x1.shape[0]
    k_t, k_path, k_model = jax.random.split(key, 3)
    t = time_sampler.sample(k_t, batch).astype(x1.dtype)
    sample = jax.vmap(path.sample_conditional)(jax.random.split(k_path, batch), x1, t)
    target = jax.lax.stop_gradient(sample.target)
    # Training mode: stochastic layers (dropout) draw fresh masks from this step's key.
    prediction = apply(params, sample.z_t, t, key=k_model)
    check_same_shape(prediction, target, "model prediction", "path target")
    err = _squared_error(prediction, target)
    if weighting is not None:
        err = weighting(t) * err
    loss = jnp.mean(err)
    return loss, {"loss": loss}
