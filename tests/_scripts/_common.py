"""Shared set-up of the subprocess scripts: a width-32 MLP flow-matching problem on a fixed 2-D data set."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

import fm_jax as fj

GLOBAL_BATCH = 64
NUM_EXAMPLES = 1024


def problem(width: int = 32, learning_rate: float = 1e-2):
    """(path, apply, params, optimizer, loss_fn): `fm_jax.models.MLP` of width 32, the flow-matching loss (fed
    `fd.index_batch` batches: per-example keys)."""
    path = fj.paths.AffinePath(fj.paths.CondOT())
    make = lambda: fj.models.MLP(2, 2, hidden=width, depth=2, time_features=16, rngs=nnx.Rngs(0))
    apply, _ = fj.models.as_apply(nnx.eval_shape(make))
    # One compiled initialisation instead of one eager dispatch (and compilation) per initialiser.
    params = jax.jit(lambda: fj.models.as_apply(make())[1])()
    optimizer = fj.make_optimizer(learning_rate)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply)
    return path, apply, params, optimizer, loss_fn


def dataset() -> np.ndarray:
    """A fixed training set (NUM_EXAMPLES, 2) (two noisy half circles), identical in every process."""
    rng = np.random.default_rng(123)
    angle = rng.uniform(0, np.pi, NUM_EXAMPLES)
    upper = rng.integers(0, 2, NUM_EXAMPLES)
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    return (np.stack([x, y], -1) + 0.05 * rng.normal(size=(NUM_EXAMPLES, 2))).astype(np.float32)


def batch_rows(step: int) -> np.ndarray:
    """The dataset rows of global batch `step` (a deterministic function of the step, the same in every process)."""
    return np.random.default_rng(step).choice(NUM_EXAMPLES, GLOBAL_BATCH, replace=False)
