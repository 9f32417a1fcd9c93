"""One process of a data-parallel run: `jax.distributed` from environment variables, each process loading only its
rows of every global batch, global arrays from `jax.make_array_from_process_local_data`.

Launched by the tests once per process (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID set) or alone.
Writes `<out>/process_<i>.npz` (final parameters, optimiser state, per-step losses) and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import GLOBAL_BATCH, batch_rows, dataset, problem  # noqa: E402

import fm_jax as fj  # noqa: E402
from fm_jax import distributed as fd  # noqa: E402
from fm_jax.checkpoint import TrainingCheckpointer  # noqa: E402


def train(steps: int, checkpoint_dir: str | None = None, model_axis: int = 1) -> tuple[list[np.ndarray], list[float],
                                                                                    slice]:
    """Train `steps` steps on all devices of all processes; (this process's copy of the parameter and optimiser
    leaves, per-step losses, this process's rows of each global batch). With `checkpoint_dir`, save the final
    state there (every process takes part in the save)."""
    path, apply, params, optimizer, loss_fn = problem()
    mesh = fd.make_mesh(model=model_axis)
    rows = fd.process_batch_rows(GLOBAL_BATCH, mesh)
    data = dataset()
    # With a model axis, split every kernel of the tiny MLP (min_shard_size=64) so that the test exercises it.
    min_size = 64 if model_axis > 1 else 2**18
    state = fd.shard_state(fj.init_train_state(jax.random.key(7), jax.tree_util.tree_map(jnp.copy, params),
                                               optimizer), mesh, min_shard_size=min_size)
    path = fd.replicate(path, mesh)
    step = fd.make_sharded_train_step(loss_fn, optimizer, mesh, min_shard_size=min_size)
    losses = []
    for s in range(steps):
        mine = batch_rows(s)[rows]  # this process reads only its rows of the global batch
        batch = fd.shard_batch(fd.index_batch(data[mine], start=rows.start), mesh)
        state, metrics = step(state, batch, path)
        losses.append(float(metrics["loss"]))  # replicated scalar: a host sync every step
    if checkpoint_dir is not None:
        with TrainingCheckpointer(checkpoint_dir, {"global_batch": GLOBAL_BATCH}, save_every=steps) as ckpt:
            ckpt.save(state)
    # Every process gathers the full values (shards split over a model axis may live on other processes).
    from jax.experimental import multihost_utils

    local = multihost_utils.process_allgather((state.params, state.opt_state), tiled=True)
    return jax.tree_util.tree_leaves(local), losses, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--model-axis", type=int, default=1)
    args = parser.parse_args()
    process_index, process_count = fd.initialize_from_env(initialization_timeout=60)
    leaves, losses, rows = train(args.steps, args.checkpoint_dir, args.model_axis)
    np.savez(os.path.join(args.out, f"process_{process_index}.npz"), losses=np.asarray(losses),
             **{f"leaf_{i}": x for i, x in enumerate(leaves)})
    print(json.dumps({"process": process_index, "processes": process_count, "devices": jax.device_count(),
                      "local_devices": jax.local_device_count(), "rows": [rows.start, rows.stop],
                      "final_loss": losses[-1]}))


if __name__ == "__main__":
    main()
