"""Training objectives: flow-matching regression and the time samplers it draws t from.

Single-example inside (`path.sample_conditional` sees one `x1` and one `t`), vmapped over the batch; the model
is batched. The regression target is held fixed (`stop_gradient`): gradients reach only the model.

A batch is either a plain array x1 (B, *d) or a `Batch(x1, cond, index)`:
- `cond` (optional): conditioning for the model (class labels (B,) or any batched pytree); with
  `cond_dropout=ConditionDropout(p, null_cond)` each example's condition is replaced by the null condition with
  probability p (classifier-free guidance training, Ho & Salimans 2022).
- `index` (optional): each example's index in the global batch. When given, example i draws its time, path
  sample and label dropout from fold_in(key, index[i]), so the loss of a global batch does not depend on how
  its rows are split across devices or hosts (the model's own dropout masks still come from the step key).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import check_same_shape
from ._typing import Array, Float, Int, Key, Params, PyTree
from ._util import as_float_array
from .couplings import AbstractCoupling, IndependentCoupling
from .paths.base import AbstractCouplablePath, AbstractPath


class Batch(NamedTuple):
    """A training batch: data x1 (B, *d), optional conditioning `cond` (batched pytree) and optional global
    example `index` (B,) int (per-example keys; see the module docstring)."""

    x1: Float[Array, " B *d"]
    cond: PyTree[Array] | None = None
    index: Int[Array, " B"] | None = None


class ConditionDropout(eqx.Module):
    """Replace one example's condition by `null_cond` with probability `probability` (classifier-free guidance).

    Args:
        probability: drop probability p in [0, 1] (an array leaf: changing it does not recompile).
        null_cond: one example's null condition, e.g. `jnp.asarray(num_classes)` for a class-conditional model
            with a null class (`fm_jax.models.MLP(num_classes=...)`); broadcast to each example's condition.
    """

    probability: Array = eqx.field(converter=as_float_array)
    null_cond: PyTree[Array] = eqx.field(converter=lambda c: jax.tree_util.tree_map(jnp.asarray, c))

    def __call__(self, key: Key, cond: PyTree[Array]) -> PyTree[Array]:
        """One example's condition, dropped to the null condition with probability p."""
        drop = jax.random.bernoulli(key, self.probability)
        return jax.tree_util.tree_map(
            lambda c, n: jnp.where(drop, jnp.broadcast_to(n, jnp.shape(c)).astype(c.dtype), c), cond, self.null_cond
        )


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


def _as_batch(batch) -> Batch:
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, jax.Array | jnp.ndarray) or hasattr(batch, "__array__"):
        return Batch(jnp.asarray(batch))
    raise TypeError(
        f"batch must be an array x1 (B, *d) or fm_jax.losses.Batch(x1, cond, index), got {type(batch).__name__}"
    )


def _flatten(x: PyTree[Array]) -> Array:
    return x.reshape(x.shape[0], -1)


def _coupling_groups(cond: PyTree[Array] | None) -> Array | None:
    """Class labels (B,) to couple within, or None; other conditioning cannot be grouped."""
    if cond is None:
        return None
    leaves = jax.tree_util.tree_leaves(cond)
    if len(leaves) != 1 or leaves[0].ndim != 1 or not jnp.issubdtype(leaves[0].dtype, jnp.integer):
        raise ValueError(
            "a minibatch coupling with conditioning pairs within classes and needs integer class labels (B,) as "
            "cond; for other conditioning use IndependentCoupling()"
        )
    return leaves[0]


def flow_matching_loss(
    params: Params,
    key: Key,
    batch: Float[Array, " B *d"] | Batch,
    path: AbstractPath,
    *,
    apply: Callable,
    time_sampler: AbstractTimeSampler = UniformTime(),
    weighting: Callable[[Array], Array] | None = None,
    coupling: AbstractCoupling = IndependentCoupling(),
    cond_dropout: ConditionDropout | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Flow-matching regression E_t E_{(z0, x1) ~ coupling} E_{z_t | z0, x1} [ w(t) ||model(z_t, t, c) − target||² ].

    Args:
        params: model parameters; `apply(params, z, t, cond=None, *, key=None)` is the batched model
            (`fm_jax.models.as_apply`); it is called in training mode, with a key of its own.
        key: PRNG key (split into the time draws, one key per example, and the model's key).
        batch: data x1 (B, *d), or `Batch(x1, cond, index)` (module docstring).
        path: any `AbstractPath`; passed as an argument (not closed over) so one compiled step serves every
            hyper-parameter value.
        time_sampler: the law of t. weighting: optional w(t) (B,) -> (B,).
        coupling: how source draws are paired with data rows (`fm_jax.couplings`). The default independent
            coupling uses `path.sample_conditional` (any path); any other coupling draws z0 (B, ...) from
            `path.sample_source`, pairs them with the rows of x1 and samples `path.sample_conditional_given_source`,
            so the path must be an `AbstractCouplablePath`. Minibatch couplings look at the whole local batch, so
            they cannot be combined with per-example keys (`Batch.index`).
        cond_dropout: optional `ConditionDropout` (classifier-free guidance training; needs `Batch.cond`).
    Returns:
        (loss, {"loss": loss}) with loss the batch mean of the weighted per-example squared error (summed over
        dimensions).
    """
    x1, cond, index = _as_batch(batch)
    n = x1.shape[0]
    if n < 1:
        raise ValueError(f"the batch is empty (x1 has shape {x1.shape}): batch_size must be at least 1")
    independent = isinstance(coupling, IndependentCoupling)
    if cond_dropout is not None and cond is None:
        raise ValueError("cond_dropout needs a conditioned batch: pass Batch(x1, cond=labels)")
    if not independent and not isinstance(path, AbstractCouplablePath):
        raise TypeError(
            f"{type(coupling).__name__} needs a path that samples given a source draw (AbstractCouplablePath); "
            f"{type(path).__name__} is not one: use IndependentCoupling()"
        )
    k_t, k_path, k_model = jax.random.split(key, 3)
    k_drop, k_couple = jax.random.split(jax.random.fold_in(key, 1))
    if index is None:
        t = time_sampler.sample(k_t, n).astype(x1.dtype)
        path_keys = jax.random.split(k_path, n)
        drop_keys = jax.random.split(k_drop, n)
    else:
        if not independent:
            raise ValueError("minibatch couplings depend on the whole local batch; drop Batch.index to use one")

        def example_keys(i):
            k_i = jax.random.fold_in(key, i)
            kt, kp = jax.random.split(k_i)
            return time_sampler.sample(kt, 1)[0], kp, jax.random.fold_in(k_i, 1)

        t, path_keys, drop_keys = jax.vmap(example_keys)(jnp.asarray(index))
        t = t.astype(x1.dtype)
    if cond_dropout is not None:
        cond = jax.vmap(cond_dropout)(drop_keys, cond)
    if independent:
        sample = jax.vmap(path.sample_conditional)(path_keys, x1, t)
    else:
        k_source, k_pair = jax.random.split(k_couple)
        z0 = jax.vmap(lambda k: path.sample_source(k, x1.shape[1:]))(jax.random.split(k_source, n))
        positions = jax.vmap(path.readout)(z0)
        pairs = coupling.source_indices(k_pair, _flatten(positions), _flatten(x1), _coupling_groups(cond))
        z0 = jax.tree_util.tree_map(lambda leaf: leaf[jax.lax.stop_gradient(pairs)], z0)
        sample = jax.vmap(path.sample_conditional_given_source)(path_keys, z0, x1, t)
    target = jax.lax.stop_gradient(sample.target)
    # Training mode: stochastic layers (dropout) draw fresh masks from this step's key.
    try:
        if cond is None:
            prediction = apply(params, sample.z_t, t, key=k_model)
        else:
            prediction = apply(params, sample.z_t, t, cond, key=k_model)
    except (TypeError, ValueError) as err:
        # Shapes are static: a model built for another state size fails here, at trace time, deep inside Flax.
        shapes = jax.tree_util.tree_map(lambda leaf: tuple(leaf.shape[1:]), sample.z_t)
        size = sum(math.prod(leaf.shape[1:]) for leaf in jax.tree_util.tree_leaves(sample.z_t))
        raise ValueError(
            f"the model could not take the state of {type(path).__name__}: one example's state is {shapes} "
            f"({size} values); build the model for that input (e.g. fm_jax.models.MLP({size}, ...)). "
            f"The model said: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    check_same_shape(prediction, target, "model prediction", "path target")
    err = _squared_error(prediction, target)
    if weighting is not None:
        err = weighting(t) * err
    loss = jnp.mean(err)
    return loss, {"loss": loss}
