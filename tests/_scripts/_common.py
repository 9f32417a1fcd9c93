"""Shared set-up of the subprocess scripts: a tiny MLP flow-matching problem on half moons."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

import fm_jax as fj
from fm_jax import distributed as fd

GLOBAL_BATCH = 64
NUM_EXAMPLES = 1024


def problem(width: int = 32, learning_rate: float = 1e-2, compute_dtype=None):
    """(path, apply, params, optimizer, loss_fn) of a width-32 MLP on 2-D data with the example-keyed loss."""
    path = fj.paths.AffinePath(fj.paths.CondOT())
    model = fj.models.MLP(2, 2, hidden=width, depth=2, time_features=16, rngs=nnx.Rngs(0))
    apply, params = fj.models.as_apply(model)
    if compute_dtype is not None:
        apply = fd.mixed_precision(apply, compute_dtype)
    optimizer = fj.make_optimizer(learning_rate)
    loss_fn = functools.partial(fd.example_keyed_flow_matching_loss, apply=apply)
    return path, apply, params, optimizer, loss_fn


def dataset() -> np.ndarray:
    """A fixed training set (NUM_EXAMPLES, 2), identical in every process."""
    return np.asarray(fj.data.toy.half_moons(jax.random.key(123), NUM_EXAMPLES))


def batch_rows(step: int) -> np.ndarray:
    """The dataset rows of global batch `step` (a deterministic function of the step, the same in every process)."""
    return np.random.default_rng(step).choice(NUM_EXAMPLES, GLOBAL_BATCH, replace=False)
