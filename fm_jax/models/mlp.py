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


class MLP(nnx.Module):
    """u_θ(z, t): an MLP on [flatten(z), fourier(t)] with SiLU activations.

    Args:
        in_features: total size of one example's state (all pytree leaves of z, flattened).
        out_features: size of one example's prediction; the output is reshaped to `out_shape` if given.
        hidden: width of the hidden layers; depth: number of hidden layers; time_features: embedding size.
    Call: `model(z, t)` with z (B, *d) or a pytree of (B, ...) arrays and t (B,) → (B, out_features) or
    (B, *out_shape).
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

    def __call__(self, z: PyTree[Array], t: Array) -> Array:
        h = flatten_state(z)
        # The embedding is computed in float32 (or wider) even under bfloat16 compute: angles reach 2π·64·t,
        # and a bfloat16 angle of that size is off by up to a radian.
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(h.dtype, jnp.float32)), (h.shape[0],))
        h = jnp.concatenate([h, fourier_time_embedding(t, self.time_features).astype(h.dtype)], axis=-1)
        for layer in self.hidden_layers:
            h = nnx.silu(layer(h))
        out = self.output_layer(h)
        return out.reshape(out.shape[:1] + self.out_shape)
