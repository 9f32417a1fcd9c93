"""Train a tiny problem with a `TrainingCheckpointer`, resuming from `--workdir` if it holds checkpoints.

Prints `RESUMED <step>` / `FRESH`, `SAVED <step>` after every completed save (waited for, so a kill after the line
cannot lose it), and `STOPPED <step>` after a SIGTERM-triggered save. With `--hang-after K` the process keeps
running (sleeping) once step K is done, to be killed. Writes the final state to `--out` (npz) when it finishes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import batch_rows, dataset, problem  # noqa: E402

import fm_jax as fj  # noqa: E402
from fm_jax import distributed as fd  # noqa: E402
from fm_jax.checkpoint import TrainingCheckpointer  # noqa: E402


def state_arrays(state) -> dict[str, np.ndarray]:
    """Every leaf of the state (params, optimiser state, EMA, step, key) by its key path."""
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--hang-after", type=int, default=-1)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step (to leave room for a signal)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    path, apply, params, optimizer, loss_fn = problem()
    data = dataset()
    step_fn = fj.make_train_step(loss_fn, optimizer)
    config = {"model": {"width": 32, "depth": 2}, "optimizer": {"learning_rate": 1e-2}, "train": {"steps": args.steps}}
    ckpt = TrainingCheckpointer(args.workdir, config, keep=args.keep, save_every=args.save_every,
                                ignore_config_keys=("train.steps",))
    state = fj.init_train_state(jax.random.key(7), jax.tree_util.tree_map(jnp.copy, params), optimizer)
    state, resumed = ckpt.restore_or_init(state)
    print(f"RESUMED {int(state.step)}" if resumed else "FRESH", flush=True)
    while int(state.step) < args.steps:
        s = int(state.step)
        state, metrics = step_fn(state, fd.index_batch(data[batch_rows(s)]), path)
        float(metrics["loss"])
        s += 1
        if ckpt.save(state, step=s):
            print(f"STOPPED {s}", flush=True)
            ckpt.close()
            return
        if s % args.save_every == 0:
            ckpt.wait_until_finished()
            print(f"SAVED {s}", flush=True)
        if s == args.hang_after:
            print(f"HANGING {s}", flush=True)
            while True:
                time.sleep(1.0)
        time.sleep(args.sleep)
    ckpt.close()
    if args.out:
        np.savez(args.out, **state_arrays(state))
    print(f"DONE {int(state.step)}", flush=True)


if __name__ == "__main__":
    main()
