"""`train_and_evaluate(config, workdir)`: train one registered path on one toy dataset and evaluate it.

    python -m experiments.main --config experiments/configs/default.py:ve --workdir workdir/ve

Runs on the shared skeleton: every name and value of the config is checked first (`validate`), the state is
restored from `<workdir>/checkpoints` when a checkpoint is there (SIGTERM writes one and stops; relaunching
resumes bit-identically: the data are drawn in-graph from the step's key), `fm_jax.training.fit` trains K steps
per compiled call and stops with `DivergenceError` after `train.max_bad_steps` consecutive skipped steps.
Writes into `workdir`: `metrics.csv` (training curve, appended on resume), `tensorboard/` (if `log.tensorboard`),
`results.json` (evaluation), and, if `eval.plots`, `samples.png` and `trajectories.png`.
Without a workdir (`train(..., workdir=None)`) nothing is written and nothing is checkpointed.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

import fm_jax as fj
from experiments import common, evaluation, plots, registry
from fm_jax._checks import check_finite

DATA_SHAPE = (2,)


def validate(config) -> None:
    """Resolve every registry name and check every training value of `config` (one-line `ConfigError`)."""
    for what, build in (("path", common.build_path), ("dataset", common.build_toy_dataset),
                        ("train.time_sampler", common.build_time_sampler)):
        try:
            build(config)
        except ValueError as err:
            raise common.ConfigError(f"{what}: {err}") from None
    common.validate_train(config.train)
    evaluation.validate(config.eval)
    m = config.model
    for field in ("hidden", "depth", "time_features"):
        common.require(m[field] >= 1, f"model.{field} must be >= 1, got {m[field]}")


@functools.cache
def _architecture(in_features: int, out_features: int, hidden: int, depth: int, time_features: int):
    """One `apply` per architecture, so compiled train loops and samplers are reused across runs and paths."""
    model = fj.models.MLP(in_features, out_features, hidden=hidden, depth=depth, time_features=time_features,
                          rngs=nnx.Rngs(0))
    apply, _ = fj.models.as_apply(model)
    return apply


def init_model(config, path, seed: int):
    """(apply, params) of the toy MLP sized for `path`'s state and target on 2-D data."""
    shapes = jax.eval_shape(path.sample_conditional, jax.random.key(0), jnp.zeros(DATA_SHAPE), jnp.asarray(0.5))
    in_features = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes.z_t))
    out_features = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes.target))
    m = config.model
    apply = _architecture(in_features, out_features, m.hidden, m.depth, m.time_features)
    model = fj.models.MLP(in_features, out_features, hidden=m.hidden, depth=m.depth, time_features=m.time_features,
                          rngs=nnx.Rngs(seed))
    _, params = fj.models.as_apply(model)
    return apply, params


def make_optimizer(t, flatten: bool = True):
    """The optimiser of the train block `t` (`flatten=False` where parameters are split over a model axis)."""
    return fj.make_optimizer(t.learning_rate, warmup_steps=t.warmup_steps, total_steps=t.steps,
                             final_lr_fraction=t.final_lr_fraction, weight_decay=t.get("weight_decay", 0.0),
                             clip_norm=t.clip_norm, flatten=flatten)


@functools.cache
def _train_loop(apply, config_json: str):
    # Keyed by the architecture and the training/data fields, so runs of different paths share compiled loops.
    from ml_collections import ConfigDict

    config = ConfigDict(json.loads(config_json))
    t = config.train
    optimizer = make_optimizer(t)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply, time_sampler=common.build_time_sampler(config))
    data_fn = common.build_toy_dataset(config)
    loop = fj.training.make_train_loop(loss_fn, optimizer, lambda k: data_fn(k, t.batch_size),
                                       steps_per_call=t.steps_per_call, ema_decay=t.ema_decay)
    return optimizer, loop


def train(config, path, apply, params, workdir: str | None = None, progress: bool = True):
    """Train `params` on `config.dataset` (resuming from `<workdir>/checkpoints`); returns (state, seconds, rows).

    Raises `common.Preempted` after SIGTERM (a checkpoint is on disk) and `fm_jax.training.DivergenceError`.
    """
    t = config.train
    key = json.dumps({"train": t.to_dict(), "dataset": config.dataset.to_dict()}, sort_keys=True, default=list)
    optimizer, loop = _train_loop(apply, key)
    state = fj.init_train_state(jax.random.key(config.seed), params, optimizer)
    ckpt = common.checkpointer(config, workdir) if workdir is not None else None
    rows: list[dict] = []
    try:
        if ckpt is not None:
            state, _ = common.resume(ckpt, state)
        start = int(state.step)
        hooks = [lambda step, s, row: rows.append(row)]
        writer = None
        if workdir is not None:
            writer = fj.training.MetricsWriter(workdir, start_step=start, tensorboard=config.log.tensorboard)
            hooks.append(writer)
        bar = tqdm(total=t.steps, initial=start, desc=f"{config.path.name}/{config.dataset.name}",
                   disable=not progress, leave=False)

        def show(step, row):
            bar.update(t.steps_per_call)
            bar.set_postfix(loss=f"{row['loss']:.4f}")

        try:
            result = fj.training.fit(state, lambda s: loop(s, path), t.steps, steps_per_call=t.steps_per_call,
                                     checkpointer=ckpt, hooks=hooks, max_bad_steps=t.max_bad_steps, progress=show)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
    finally:
        if ckpt is not None:
            ckpt.close()
    if result.preempted:
        raise common.Preempted(result.step, ckpt.directory)
    seconds = sum(r["seconds"] for r in rows[-1:])
    return result.state, seconds, rows


def distances(x, reference, e) -> dict[str, float]:
    """The toy metrics of samples x (n, 2) against `reference` (n, 2).

    Exact W2 is the mean over the n // `e.w2_samples` disjoint blocks of `e.w2_samples` points (block i of x
    against block i of the reference), with its standard error over blocks ("w2_se"; NaN for one block): one
    exact W2 of 1,000 points has a sampling spread of ~10 % on these datasets, so averaging blocks is what lets
    a model be compared with the data-vs-data floor at all. Sliced W2 (the same 256 directions for every call),
    MMD and energy distance use all points (their sampling floors sit well below exact W2's).
    """
    x, reference = np.asarray(x), np.asarray(reference)
    m = e.w2_samples
    blocks = max(min(len(x), len(reference)) // m, 1)
    w2 = np.array([fj.metrics.wasserstein2(x[i * m:(i + 1) * m], reference[i * m:(i + 1) * m])
                   for i in range(blocks)])
    sw2 = fj.metrics.sliced_wasserstein2(jax.random.key(0), jnp.asarray(x), jnp.asarray(reference),
                                         num_projections=256)
    return {"w2": float(w2.mean()), "w2_se": float(w2.std(ddof=1) / np.sqrt(blocks)) if blocks > 1 else math.nan,
            "sw2": float(sw2), "mmd": float(fj.metrics.mmd(jnp.asarray(x), jnp.asarray(reference))),
            "energy": float(fj.metrics.energy_distance(jnp.asarray(x), jnp.asarray(reference)))}


def reference_samples(config, data_fn, draw: int = 0) -> np.ndarray:
    """`eval.num_samples` data points of the evaluation reference (draw 0) or an independent draw (draw 1: the
    data-vs-data floor of every metric)."""
    reference = np.asarray(data_fn(jax.random.key(config.seed + 20_000 + 10_000 * draw), config.eval.num_samples))
    check_finite(reference, f"reference samples of {config.dataset.name}")
    return reference


TRAJECTORY_POINTS = 1000  # samples and trajectories kept for the plots


def evaluate(config, path, apply, params, reference) -> dict[str, Any]:
    """Sample with each configured step count and the adaptive solver; distances to `reference` (n, 2).

    Kinetic energy and straightness come from Euler trajectories of `eval.trajectory_steps` steps: those of the
    Euler run with that many steps when it is one of `eval.step_counts` (every sample, no second solve), else of
    a separate run of 1,000 samples.
    """
    e = config.eval
    key = jax.random.key(config.seed + 10_000)
    reuse = bool(e.trajectory_steps) and e.solver == "euler" and e.trajectory_steps == max(e.step_counts, default=0)
    out: dict[str, Any] = evaluation.evaluate(key, path, apply, params, e, DATA_SHAPE,
                                              lambda x: distances(x, reference, e), keep_trajectory=reuse)
    if reuse:
        run = out[f"euler{e.trajectory_steps}"]
        traj, ts = run.pop("_trajectory"), run.pop("_ts")
    elif e.trajectory_steps:
        res = fj.sample(key, path, apply, params, min(e.num_samples, TRAJECTORY_POINTS), DATA_SHAPE,
                        solver=registry.get_solver("euler"), num_steps=e.trajectory_steps,
                        save_trajectory=e.trajectory_steps + 1)
        traj, ts = np.asarray(jax.vmap(path.readout)(res.trajectory)), res.ts
    if e.trajectory_steps:
        out["kinetic_energy"] = float(fj.metrics.kinetic_energy(traj, ts))
        out["straightness"] = float(fj.metrics.straightness(traj, ts))
        out["_trajectory"] = np.asarray(traj[:, :TRAJECTORY_POINTS])
        out["_samples"] = np.asarray(traj[-1, :TRAJECTORY_POINTS])
    if e.log_likelihood_samples:
        out["log_likelihood"] = None  # exact likelihood needs a source density
        if isinstance(path, fj.paths.AbstractSourceDensity):
            lp, _ = fj.log_likelihood(path, apply, params, jnp.asarray(reference[: e.log_likelihood_samples]))
            out["log_likelihood"] = float(jnp.mean(lp))
    return out


def train_and_evaluate(config, workdir: str, progress: bool = True) -> dict[str, Any]:
    """Validate, train (resuming) `config.path` on `config.dataset`, evaluate, and write results to `workdir`.

    Returns the evaluation dictionary (plus `train_seconds`, `final_loss`, `skipped_steps` of this session).
    """
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    path = common.build_path(config)
    data_fn = common.build_toy_dataset(config)
    apply, params = init_model(config, path, config.seed)
    state, seconds, rows = train(config, path, apply, params, workdir, progress)
    reference = reference_samples(config, data_fn)
    results = evaluate(config, path, apply, state.ema_params, reference)
    results["train_seconds"] = seconds
    results["final_loss"] = rows[-1]["loss"] if rows else None
    results["skipped_steps"] = sum(r["skipped"] for r in rows)
    label = f"{config.path.name} on {config.dataset.name}"
    if config.eval.plots and "_samples" in results:
        plots.samples(results["_samples"], reference, os.path.join(workdir, "samples.png"), label)
        plots.trajectories(results["_trajectory"], os.path.join(workdir, "trajectories.png"), label)
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"config": config.to_dict(), "results": public}, f, indent=2, default=list)
    return results
