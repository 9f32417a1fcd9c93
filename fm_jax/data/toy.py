"""Toy 2-D datasets in pure JAX: every generator is `name(key, n, ...) -> (n, 2)` and works under jit.

`n` sets a shape, so it is a Python int; the rest are ordinary arguments. Mixture datasets expose their exact
density parameters (`eight_gaussians_mixture`, `gaussian_grid_mixture`) for log-likelihood metrics.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .._typing import Array, Key


def half_moons(key: Key, n: int, noise: float = 0.05) -> Array:
    """Two interleaving half circles (sklearn's make_moons geometry), centred and scaled by 2: (n, 2)."""
    k_side, k_angle, k_noise = jax.random.split(key, 3)
    theta = jax.random.uniform(k_angle, (n,), minval=0.0, maxval=math.pi)
    upper = jax.random.bernoulli(k_side, 0.5, (n,))
    x = jnp.where(upper, jnp.cos(theta), 1.0 - jnp.cos(theta))
    y = jnp.where(upper, jnp.sin(theta), 0.5 - jnp.sin(theta))
    pts = jnp.stack([x - 0.5, y - 0.25], axis=-1) * 2.0
    return pts + noise * 2.0 * jax.random.normal(k_noise, (n, 2))


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.2) -> tuple[Array, Array, Array]:
    """(means (8, 2), stds (8,), weights (8,)) of the eight-Gaussians mixture."""
    angles = jnp.arange(8) * (2 * math.pi / 8)
    means = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    return means, jnp.full((8,), std), jnp.full((8,), 1.0 / 8)


def eight_gaussians(key: Key, n: int, radius: float = 2.0, std: float = 0.2) -> Array:
    """Eight isotropic Gaussians evenly spaced on a circle of `radius`: (n, 2)."""
    means, _, _ = eight_gaussians_mixture(radius, std)
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.randint(k_comp, (n,), 0, 8)
    return means[comp] + std * jax.random.normal(k_noise, (n, 2))


def gaussian_grid_mixture(std: float = 0.1, spacing: float = 1.0, size: int = 3) -> tuple[Array, Array, Array]:
    """(means (size², 2), stds, weights) of a size×size grid of Gaussians centred at 0 with `spacing`."""
    ticks = (jnp.arange(size) - (size - 1) / 2) * spacing
    gx, gy = jnp.meshgrid(ticks, ticks, indexing="ij")
    means = jnp.stack([gx.ravel(), gy.ravel()], axis=-1)
    k = size * size
    return means, jnp.full((k,), std), jnp.full((k,), 1.0 / k)


def gaussian_grid(key: Key, n: int, std: float = 0.1, spacing: float = 1.0, size: int = 3) -> Array:
    """A size×size grid of isotropic Gaussian modes (3×3 by default; tiny `std` gives near-Dirac modes): (n, 2)."""
    means, _, _ = gaussian_grid_mixture(std, spacing, size)
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.randint(k_comp, (n,), 0, size * size)
    return means[comp] + std * jax.random.normal(k_noise, (n, 2))


def checkerboard(key: Key, n: int, squares: int = 4, width: float = 4.0) -> Array:
    """Uniform on the dark squares of a `squares`×`squares` board spanning [-width/2, width/2]²: (n, 2)."""
    k_cell, k_pos = jax.random.split(key)
    # Dark squares are those with (i + j) even: pick a row i, then a column of matching parity.
    half = squares // 2
    i = jax.random.randint(k_cell, (n,), 0, squares)
    j = 2 * jax.random.randint(jax.random.fold_in(k_cell, 1), (n,), 0, half) + (i % 2)
    u = jax.random.uniform(k_pos, (n, 2))
    cell = width / squares
    return (jnp.stack([i, j], axis=-1) + u) * cell - width / 2


def two_spirals(key: Key, n: int, noise: float = 0.1, turns: float = 1.5) -> Array:
    """Two interleaved Archimedean spirals (point-symmetric), radius up to ~3: (n, 2)."""
    k_arm, k_pos, k_noise = jax.random.split(key, 3)
    s = jnp.sqrt(jax.random.uniform(k_pos, (n,)))  # sqrt: uniform density along the arm's length
    theta = s * turns * 2 * math.pi
    r = 3.0 * s
    sign = jnp.where(jax.random.bernoulli(k_arm, 0.5, (n,)), 1.0, -1.0)
    pts = sign[:, None] * jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)], axis=-1)
    return pts + noise * jax.random.normal(k_noise, (n, 2))


def circles(key: Key, n: int, noise: float = 0.05, factor: float = 0.5, radius: float = 2.0) -> Array:
    """Two concentric circles of radii `radius` and `factor·radius`: (n, 2)."""
    k_ring, k_angle, k_noise = jax.random.split(key, 3)
    theta = jax.random.uniform(k_angle, (n,), maxval=2 * math.pi)
    r = jnp.where(jax.random.bernoulli(k_ring, 0.5, (n,)), radius, factor * radius)
    pts = r[:, None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    return pts + noise * radius * jax.random.normal(k_noise, (n, 2))
