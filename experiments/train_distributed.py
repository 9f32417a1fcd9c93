"""Data-parallel, multi-host, preemption-safe training of a toy config on every device of every process.

    python -m experiments.train_distributed --config experiments/configs/default.py --workdir workdir/dp

Launch the same command on every host (see docs/distributed.md): `jax.distributed` starts from the environment,
each process draws only its rows of each global batch (`config.train.batch_size`), checkpoints go to
`<workdir>/checkpoints` every `--save_every` steps, SIGTERM writes a final checkpoint and exits, and relaunching
resumes. Process 0 writes `<workdir>/metrics.csv`.
"""

from __future__ import annotations

import csv
import functools
import os
import time

import jax
from absl import app, flags
from etils import epath
from ml_collections import config_flags

import fm_jax as fj
from experiments import registry
from experiments.train import init_model
from fm_jax import distributed as fd
from fm_jax.checkpoint import TrainingCheckpointer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Experiment configuration file.")
flags.DEFINE_string("workdir", "workdir/dp", "Directory for checkpoints and metrics.")
flags.DEFINE_bool("auto_detect", False, "Let JAX find the cluster itself (Cloud TPU pod slices).")
flags.DEFINE_integer("model_axis", 1, "Size of the mesh's `model` axis (splits large parameter tensors).")
flags.DEFINE_bool("bf16", False, "bfloat16 compute with float32 parameters.")
flags.DEFINE_integer("save_every", 500, "Checkpoint interval in steps.")
flags.DEFINE_integer("keep", 3, "Number of checkpoints kept.")
flags.DEFINE_integer("log_every", 20, "Steps between metric reads (a host sync).")


def train_distributed(config, workdir: str, *, model_axis: int = 1, bf16: bool = False, save_every: int = 500,
                      keep: int = 3, log_every: int = 20, handle_sigterm: bool = True) -> dict:
    """Train `config` sharded over all devices; returns {"step", "loss", "resumed_from", "seconds", "preempted"}."""
    t = config.train
    path = registry.get_path(config.path)
    data_fn = registry.get_dataset(config.dataset)
    apply, params = init_model(config, path, config.seed)
    if bf16:
        apply = fd.mixed_precision(apply)
    loss_fn = functools.partial(fd.example_keyed_flow_matching_loss, apply=apply,
                                time_sampler=registry.get_time_sampler(t.time_sampler))
    optimizer = fj.make_optimizer(t.learning_rate, warmup_steps=t.warmup_steps, total_steps=t.steps,
                                  final_lr_fraction=t.final_lr_fraction, weight_decay=t.weight_decay,
                                  clip_norm=t.clip_norm)
    mesh = fd.make_mesh(model=model_axis)
    step_fn = fd.make_sharded_train_step(loss_fn, optimizer, mesh, ema_decay=t.ema_decay)
    state = fd.shard_state(fj.init_train_state(jax.random.key(config.seed), params, optimizer), mesh)
    ckpt = TrainingCheckpointer(os.path.join(workdir, "checkpoints"), config, keep=keep, save_every=save_every,
                                ignore_config_keys=("train.steps",), handle_sigterm=handle_sigterm)
    state, resumed = ckpt.restore_or_init(state)
    start_step = int(state.step)
    path = fd.replicate(path, mesh)
    rows = fd.process_batch_rows(t.batch_size, mesh)
    data_key = jax.random.key(config.seed + 1)
    # Toy data is generated, not read: each process draws the step's global batch on its own host and keeps its
    # rows (a dataset on disk would read only those rows).
    local_rows = jax.jit(lambda s: data_fn(jax.random.fold_in(data_key, s), t.batch_size)[rows.start:rows.stop])

    log, loss, preempted, begin = [], float("nan"), False, time.perf_counter()
    step = start_step
    while step < t.steps:
        batch = fd.shard_batch(fd.index_batch(jax.device_get(local_rows(step)), start=rows.start), mesh)
        state, metrics = step_fn(state, batch, path)
        step += 1
        if step % log_every == 0 or step == t.steps:
            loss = float(metrics["loss"])  # also the host sync emulated CPU devices need every ~20 steps
            log.append({"step": step, "loss": loss, "seconds": time.perf_counter() - begin})
        if ckpt.save(state, step=step):
            preempted = True
            break
    if not preempted:
        ckpt.save(state, step=step, force=True)
    ckpt.close()
    if jax.process_index() == 0 and log:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        mode = "a" if resumed else "w"
        with (epath.Path(workdir) / "metrics.csv").open(mode) as f:
            writer = csv.DictWriter(f, fieldnames=list(log[0]))
            if not resumed:
                writer.writeheader()
            writer.writerows(log)
    return {"step": step, "loss": loss, "resumed_from": start_step if resumed else None,
            "seconds": time.perf_counter() - begin, "preempted": preempted}


def main(argv):
    del argv
    process, count = fd.initialize_from_env(auto_detect=FLAGS.auto_detect)
    out = train_distributed(FLAGS.config, FLAGS.workdir, model_axis=FLAGS.model_axis, bf16=FLAGS.bf16,
                            save_every=FLAGS.save_every, keep=FLAGS.keep, log_every=FLAGS.log_every)
    if process == 0:
        print(f"{count} process(es), {jax.device_count()} device(s): {out}")


if __name__ == "__main__":
    app.run(main)
