"""A time-conditioned MLP for low-dimensional data (Flax NNX)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from .._typing import Array, PyTree


def fourier_time_embedding(t: Array, num_features: int, max_frequency: float = 64.0) -> Array:
    """Sinusoidal embedding of time: [sin(2π f_k t), cos(2π f_k t)] with f_k log-spaced in [1/2, max_frequency].

    Args: t (B,) in [0, 1]; num_features even. Returns (B, num_features).
    """
    half = num_features // 2
    freqs = jnp.exp(jnp.linspace(math.log(0.5), math.log(max_frequency), half))
    angles = 2 * math.pi * t[:, None] * freqs[None, :].astype(t.dtype)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def flatten_state(z: PyTree[Array]) -> Array:
    """Concatenate the leaves of a batched state (each (B, ...)) into one (B, D) array."""
    leaves = jax.tree_util.tree_leaves(z)
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=-1)


class ClassEmbedding(nnx.Module):
    """A learned embedding of integer class labels with one extra "null" class (index `num_classes`).

    Call: `embed(labels, batch)` with labels (B,) ints in [0, num_classes] (or None: every example gets the null
    class) → (B, features).
    """

    def __init__(self, num_classes: int, features: int, *, rngs: nnx.Rngs):
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.num_classes = num_classes
        self.embed = nnx.Embed(num_classes + 1, features, rngs=rngs)

    def __call__(self, labels: Array | None, batch: int) -> Array:
        if labels is None:
            labels = jnp.full((batch,), self.num_classes, jnp.int32)
        labels = jnp.asarray(labels)
        if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"class labels must be integers of shape ({batch},), got {labels.dtype} {labels.shape}"
            )
        return self.embed(labels)


class MLP(nnx.Module):
    """u_θ(z, t): an MLP on [flatten(z), fourier(t)] with SiLU activations.

    Args:
        in_features: total size of one example's state (all pytree leaves of z, flattened).
        out_features: size of one example's prediction; the output is reshaped to `out_shape` if given.
        hidden: width of the hidden layers; depth: number of hidden layers; time_features: embedding size.
        num_classes: if given, the model is class-conditional: a learned embedding of the label (num_classes + 1
            rows; index `num_classes` = `null_class` is the "no label" class of classifier-free guidance) is
            added to the time embedding.
    Call: `model(z, t, cond=None)` with z (B, *d) or a pytree of (B, ...) arrays, t (B,) and, for a
    class-conditional model, integer labels cond (B,) in [0, num_classes] (None: the null class) →
    (B, out_features) or (B, *out_shape).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        hidden: int = 256,
        depth: int = 3,
        time_features: int = 64,
        out_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        rngs: nnx.Rngs,
    ):
        if time_features % 2:
            raise ValueError(f"time_features must be even, got {time_features}")
        self.time_features = time_features
        self.out_shape = tuple(out_shape) if out_shape is not None else (out_features,)
        if math.prod(self.out_shape) != out_features:
            raise ValueError(f"out_shape {self.out_shape} does not hold out_features={out_features} values")
        sizes = [in_features + time_features] + [hidden] * depth
        self.hidden_layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.output_layer = nnx.Linear(sizes[-1], out_features, rngs=rngs)
        self.class_embedding = ClassEmbedding(num_classes, time_features, rngs=rngs) if num_classes else None

    @property
    def null_class(self) -> int | None:
        """The label of the "no label" class (classifier-free guidance), or None for an unconditional model."""
        return None if self.class_embedding is None else self.class_embedding.num_classes

    def __call__(self, z: PyTree[Array], t: Array, cond: Array | None = None) -> Array:
        h = flatten_state(z)
        # The embedding is computed in float32 (or wider) even under bfloat16 compute: angles reach 2π·64·t,
        # and a bfloat16 angle of that size is off by up to a radian.
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(h.dtype, jnp.float32)), (h.shape[0],))
        emb = fourier_time_embedding(t, self.time_features)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(cond, h.shape[0]).astype(emb.dtype)
        elif cond is not None:
            raise ValueError("this MLP is unconditional (num_classes=None) but was given cond")
        h = jnp.concatenate([h, emb.astype(h.dtype)], axis=-1)
        for layer in self.hidden_layers:
            h = nnx.silu(layer(h))
        out = self.output_layer(h)
        return out.reshape(out.shape[:1] + self.out_shape)
