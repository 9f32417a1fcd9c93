"""`train_and_evaluate(config, workdir)`: train one registered path on one toy dataset and evaluate it.

Writes into `workdir`: `metrics.csv` (training curve), `results.json` (evaluation), and, if `config.eval.plots`,
`samples.png` (samples over data) and `trajectories.png`.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

import fm_jax as fj
from experiments import registry
from fm_jax._checks import check_finite

DATA_SHAPE = (2,)


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


@functools.cache
def _train_loop(apply, dataset: str, batch_size: int, steps_per_call: int, time_sampler: str, opt_key: tuple):
    lr, warmup, total, final_frac, wd, clip, ema = opt_key
    optimizer = fj.make_optimizer(lr, warmup_steps=warmup, total_steps=total, final_lr_fraction=final_frac,
                                  weight_decay=wd, clip_norm=clip)
    sampler = registry.get_time_sampler(time_sampler)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply, time_sampler=sampler)
    data_fn = registry.get_dataset(dataset)
    loop = fj.training.make_train_loop(loss_fn, optimizer, lambda k: data_fn(k, batch_size),
                                       steps_per_call=steps_per_call, ema_decay=ema)
    return optimizer, loop


def train(config, path, apply, params, workdir: str | None = None, progress: bool = True):
    """Train `params` on `config.dataset`; returns (state, seconds, rows of the training curve)."""
    t = config.train
    if t.steps % t.steps_per_call:
        raise ValueError(f"train.steps={t.steps} must be a multiple of train.steps_per_call={t.steps_per_call}")
    opt_key = (t.learning_rate, t.warmup_steps, t.steps, t.final_lr_fraction, t.weight_decay, t.clip_norm,
               t.ema_decay)
    optimizer, loop = _train_loop(apply, config.dataset, t.batch_size, t.steps_per_call, t.time_sampler, opt_key)
    state = fj.init_train_state(jax.random.key(config.seed), params, optimizer)
    rows = []
    start = time.perf_counter()
    bar = tqdm(total=t.steps, desc=f"{config.path}/{config.dataset}", disable=not progress, leave=False)
    for _ in range(t.steps // t.steps_per_call):
        state, metrics = loop(state, path)
        # One host sync per call (K steps): read the curve, and stop at once if training has stalled on NaNs.
        metrics = jax.device_get(metrics)
        step = int(state.step)
        row = {"step": step, "loss": float(np.mean(metrics["loss"])), "grad_norm": float(np.mean(metrics["grad_norm"])),
               "skipped": int(np.sum(metrics["skipped"])), "seconds": time.perf_counter() - start}
        rows.append(row)
        bar.update(t.steps_per_call)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if row["skipped"] == t.steps_per_call:
            raise FloatingPointError(f"every step of the last {t.steps_per_call} produced non-finite loss or "
                                     f"gradients (at step {step}); parameters were kept at their last finite value")
    bar.close()
    seconds = time.perf_counter() - start
    if workdir is not None:
        with open(os.path.join(workdir, "metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return state, seconds, rows


def evaluate(config, path, apply, params, reference) -> dict[str, Any]:
    """Sample with each configured step count and the adaptive solver; distances to `reference` (n, 2)."""
    e = config.eval
    key = jax.random.key(config.seed + 10_000)
    out: dict[str, Any] = {}
    runs = [(e.solver, n) for n in e.step_counts]
    if e.adaptive_solver:
        runs.append((e.adaptive_solver, None))
    for solver_name, n in runs:
        res = fj.sample(key, path, apply, params, e.num_samples, DATA_SHAPE, solver=registry.get_solver(solver_name),
                        num_steps=n)
        x = np.asarray(res.samples)
        tag = f"{solver_name}{n}" if n is not None else solver_name
        out[tag] = {
            "nfe": int(res.nfe),
            "w2": fj.metrics.wasserstein2(x[: e.w2_samples], reference[: e.w2_samples]),
            "mmd": float(fj.metrics.mmd(jnp.asarray(x), jnp.asarray(reference))),
            "energy": float(fj.metrics.energy_distance(jnp.asarray(x), jnp.asarray(reference))),
            "nonfinite": int(np.sum(~np.isfinite(x).all(-1))),
        }
    if e.trajectory_steps:
        res = fj.sample(key, path, apply, params, min(e.num_samples, 1000), DATA_SHAPE,
                        solver=registry.get_solver("euler"), num_steps=e.trajectory_steps,
                        save_trajectory=e.trajectory_steps + 1)
        traj = jax.vmap(path.readout)(res.trajectory)
        out["kinetic_energy"] = float(fj.metrics.kinetic_energy(traj, res.ts))
        out["straightness"] = float(fj.metrics.straightness(traj, res.ts))
        out["_trajectory"] = np.asarray(traj)
        out["_samples"] = np.asarray(res.samples)
    if e.log_likelihood_samples:
        out["log_likelihood"] = None  # exact likelihood needs a source density
        if isinstance(path, fj.paths.AbstractSourceDensity):
            lp, nfe = fj.log_likelihood(path, apply, params, jnp.asarray(reference[: e.log_likelihood_samples]))
            out["log_likelihood"] = float(jnp.mean(lp))
    return out


def plot_samples(samples, reference, filename: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, c="grey", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, c="C0", label="samples")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    fig.savefig(filename, dpi=100)
    plt.close(fig)


def plot_trajectories(traj, filename: str, title: str = "", count: int = 40) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    for i in range(min(count, traj.shape[1])):
        ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.6, alpha=0.7)
    ax.scatter(traj[-1, :count, 0], traj[-1, :count, 1], s=6, c="k")
    ax.set_title(title)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(filename, dpi=100)
    plt.close(fig)


def train_and_evaluate(config, workdir: str, progress: bool = True) -> dict[str, Any]:
    """Train `config.path` on `config.dataset`, evaluate, and write metrics, results and plots to `workdir`.

    Returns the evaluation dictionary (plus `train_seconds`, `final_loss`).
    """
    os.makedirs(workdir, exist_ok=True)
    path = registry.get_path(config.path)
    data_fn = registry.get_dataset(config.dataset)
    apply, params = init_model(config, path, config.seed)
    state, seconds, rows = train(config, path, apply, params, workdir, progress)
    reference = np.asarray(data_fn(jax.random.key(config.seed + 20_000), config.eval.num_samples))
    check_finite(reference, f"reference samples of {config.dataset}")
    results = evaluate(config, path, apply, state.ema_params, reference)
    results["train_seconds"] = seconds
    results["final_loss"] = rows[-1]["loss"]
    results["skipped_steps"] = sum(r["skipped"] for r in rows)
    if config.eval.plots and "_samples" in results:
        plot_samples(results["_samples"], reference, os.path.join(workdir, "samples.png"),
                     f"{config.path} on {config.dataset}")
        plot_trajectories(results["_trajectory"], os.path.join(workdir, "trajectories.png"),
                          f"{config.path} trajectories")
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"config": config.to_dict(), "results": public}, f, indent=2)
    return results
