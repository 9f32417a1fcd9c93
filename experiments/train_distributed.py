"""Data-parallel, multi-host, preemption-safe training of a toy config on every device of every process.

    python -m experiments.train_distributed --config experiments/configs/distributed.py --workdir workdir/dp

Launch the same command on every host (see docs/distributed.md): `jax.distributed` starts from the environment,
each process draws only its rows of each global batch (`config.train.batch_size`), checkpoints go to
`<workdir>/checkpoints` every `train.checkpoint_every` steps, SIGTERM writes a final checkpoint and exits, and
relaunching resumes (the same `fm_jax.training.fit` skeleton as every trainer, with its divergence stop).
Process 0 writes `<workdir>/metrics.csv` (a row every `distributed.log_every` steps, appended on resume).
"""

from __future__ import annotations

import functools

import jax

import fm_jax as fj
from experiments import common
from experiments.train import init_model, make_optimizer
from fm_jax import distributed as fd
from fm_jax.checkpoint import TrainingCheckpointer


def train_distributed(config, workdir: str, *, model_axis: int | None = None, bf16: bool | None = None,
                      save_every: int | None = None, keep: int | None = None, log_every: int | None = None,
                      handle_sigterm: bool = True) -> dict:
    """Train `config` sharded over all devices; returns {"step", "loss", "resumed_from", "seconds", "preempted"}.

    The keyword arguments override `config.distributed.*` / `config.train.checkpoint_every, keep_checkpoints`.
    """
    t = config.train
    launch = config.get("distributed") or {}
    model_axis = launch.get("model_axis", 1) if model_axis is None else model_axis
    bf16 = launch.get("bf16", False) if bf16 is None else bf16
    log_every = launch.get("log_every", 20) if log_every is None else log_every
    common.validate_train(t, steps_per_call=False)  # one step per call: emulated devices sync every step
    path = common.build_path(config)
    data_fn = common.build_toy_dataset(config)
    apply, params = init_model(config, path, config.seed)
    if bf16:
        apply = fj.models.mixed_precision(apply)
    # Batches carry global example indices (`fd.index_batch`): per-example keys, the same draws on any split.
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply, time_sampler=common.build_time_sampler(config))
    optimizer = make_optimizer(t, flatten=model_axis == 1)  # a flat vector would gather model-split parameters
    mesh = fd.make_mesh(model=model_axis)
    step_fn = fd.make_sharded_train_step(loss_fn, optimizer, mesh, ema_decay=t.ema_decay)
    state = fd.shard_state(fj.init_train_state(jax.random.key(config.seed), params, optimizer), mesh)
    ckpt = TrainingCheckpointer(f"{workdir}/checkpoints", config, keep=keep or t.keep_checkpoints,
                                save_every=save_every or t.checkpoint_every, ignore_config_keys=("train.steps",),
                                handle_sigterm=handle_sigterm)
    try:
        state, resumed = common.resume(ckpt, state)
        start_step = int(state.step)
        path = fd.replicate(path, mesh)
        rows = fd.process_batch_rows(t.batch_size, mesh)
        data_key = jax.random.key(config.seed + 1)
        # Toy data are generated, not read: each process draws the step's global batch on its own host and keeps
        # its rows (a dataset on disk would read only those rows).
        local_rows = jax.jit(lambda s: data_fn(jax.random.fold_in(data_key, s), t.batch_size)[rows.start:rows.stop])

        def advance(s):
            step = int(s.step)
            batch = fd.shard_batch(fd.index_batch(jax.device_get(local_rows(step)), start=rows.start), mesh)
            return step_fn(s, batch, path)

        writer = fj.training.MetricsWriter(workdir, start_step=start_step, every=log_every)
        try:
            result = fj.training.fit(state, advance, t.steps, checkpointer=ckpt, hooks=[writer],
                                     max_bad_steps=t.max_bad_steps)
        finally:
            writer.close()
    finally:
        ckpt.close()
    return {"step": result.step, "loss": result.last_row.get("loss", float("nan")),
            "resumed_from": start_step if resumed else None, "seconds": result.last_row.get("seconds", 0.0),
            "preempted": result.preempted}


def main(config, workdir: str):
    process, count = fd.initialize_from_env(auto_detect=config.distributed.auto_detect)
    out = train_distributed(config, workdir)
    if process == 0:
        print(f"{count} process(es), {jax.device_count()} device(s): {out}")
    if out["preempted"]:
        raise common.Preempted(out["step"], f"{workdir}/checkpoints")


if __name__ == "__main__":
    common.run(main, "experiments/configs/distributed.py", "workdir/dp")
