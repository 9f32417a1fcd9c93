"""The side-by-side comparison: every registered path, same network, optimiser, steps and batch per dataset.

    python -m experiments.compare --config experiments/configs/compare.py[:quick] --workdir results

Toy datasets (half-moons, 8 Gaussians, checkerboard, the 3×3 Dirac-mode grid): each path trains the toy MLP
for `train.steps` with `table.seeds` seeds, then samples with Euler at `eval.step_counts`, Heun at the same NFE
and adaptive Dopri5 (NFE reported). Per cell: W2 (exact, POT), MMD, energy distance, kinetic energy and
straightness of Euler-100 trajectories, and the exact mean log-likelihood of held-out data where the path's source
has a density (first-order paths with a Gaussian source). Mean ± std over seeds.
MNIST (offline digits, small U-Net, MNIST-FID) runs through `experiments.train_images` for every path that has
an `experiments/configs/mnist_<path>.py`.

Writes under `--workdir`: `compare.md`, `compare.csv` (one row per path × dataset × solver × seed, and the
data-vs-data floor rows), `compare_<dataset>.png` and `compare_<dataset>_mmd.png` (W2 and MMD against NFE, one
curve per path, the floor dashed), `compare_samples_<dataset>.png` (samples per path at every Euler step count and
the adaptive solver) and `compare_trajectories_<dataset>.png` (Euler-100 trajectories of a few points per path).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

import fm_jax as fj
from experiments import common, evaluation, plots, pool, registry, tables
from experiments.toy_table import row_config
from experiments.train import DATA_SHAPE, init_model, train, validate

FIELDS = ["path", "dataset", "seed", "solver", "steps", "nfe", "w2", "mmd", "energy", "kinetic_energy",
          "straightness", "log_likelihood", "mnist_fid", "train_seconds"]
FLOOR = "data vs data"  # the path label of each dataset's floor rows
TRAJECTORY_POINTS = 24  # Euler-100 trajectories drawn per path in compare_trajectories_<dataset>.png


def _heun(e):
    # Heun at the NFE of each Euler run: half the steps.
    h = e.copy_and_resolve_references()
    h.solver, h.step_counts, h.adaptive_solver = "heun", tuple(max(s // 2, 1) for s in e.step_counts), ""
    return h


def evaluate_grid(config, path, apply, params, reference, loglik_samples: int) -> list[dict]:
    """All solver settings for one trained model; one row each."""
    key = jax.random.key(config.seed + 10_000)
    n = config.eval.num_samples
    ref = jnp.asarray(reference)
    drawn = []  # the samples of every solver run, in run order (Euler ones kept for the per-NFE picture)

    def score(x):
        drawn.append(x)
        finite = np.isfinite(x).all(-1)
        return {"w2": fj.metrics.wasserstein2(x, reference[:n]) if finite.all() else math.nan,
                "mmd": float(fj.metrics.mmd(jnp.asarray(x), ref)),
                "energy": float(fj.metrics.energy_distance(jnp.asarray(x), ref))}

    rows = []
    for e in (config.eval, _heun(config.eval)):
        got = evaluation.evaluate(key, path, apply, params, e, DATA_SHAPE, score)
        for (_, solver, steps), m in zip(evaluation.solver_runs(e), got.values()):
            rows.append({"solver": solver, "steps": steps if steps is not None else "adaptive", **m})
    res = fj.sample(key, path, apply, params, n, DATA_SHAPE, solver=registry.get_solver("euler"),
                    num_steps=100, save_trajectory=101)
    traj = jax.vmap(path.readout)(res.trajectory)
    ke = float(fj.metrics.kinetic_energy(traj, res.ts))
    straight = float(fj.metrics.straightness(traj, res.ts))
    loglik = None
    # Exact likelihood needs a source density (the Kac law and ForM's phase space have none).
    if loglik_samples and isinstance(path, fj.paths.AbstractSourceDensity):
        lp, _ = fj.log_likelihood(path, apply, params, ref[:loglik_samples])
        loglik = float(jnp.mean(lp))
    for r in rows:
        r.update(kinetic_energy=ke, straightness=straight, log_likelihood=loglik)
    # For the pictures: the samples of each Euler run (by step count), the adaptive run's, and the Euler-100
    # trajectories of the first TRAJECTORY_POINTS points.
    pictures = {f"{r['solver']}{r['steps']}": np.asarray(x) for r, x in zip(rows, drawn)
                if r["solver"] in ("euler", config.eval.adaptive_solver)}
    pictures["trajectory"] = np.asarray(traj[:, :TRAJECTORY_POINTS])
    rows[-1]["_samples"] = pictures
    return rows


def toy_cell(job) -> list[dict]:
    """Train and evaluate one (path, dataset, seed) cell; its rows (the first-seed samples on the last row).
    Checkpoints go to `<out>/runs/<path>-<dataset>-s<seed>/`, so an interrupted comparison resumes per cell.
    (Module level: `pool.map_cells` pickles it into its workers.)"""
    config, name, dataset, seed, out = job
    cell_config = row_config(config, name, dataset, seed)
    workdir = os.path.join(out, "runs", f"{name}-{dataset}-s{seed}")
    # A finished cell keeps its rows (`cell.json`; its pictures' samples in `cell_samples.npz`), stamped with the
    # settings that decide them: a relaunch skips it, a changed setting evaluates it again (a changed evaluation
    # code does not: delete the cell.json files), `--start_fresh` trains and evaluates it again.
    done, samples_file = os.path.join(workdir, "cell.json"), os.path.join(workdir, "cell_samples.npz")
    stamp = json.dumps({"cell": cell_config.to_dict(), "loglik_samples": config.table.loglik_samples},
                       sort_keys=True, default=list)
    if os.path.exists(done) and os.path.exists(samples_file) and not common.START_FRESH:
        with open(done) as f:
            saved = json.load(f)
        if saved.get("stamp") == stamp:
            with np.load(samples_file) as pictures:
                saved["rows"][-1]["_samples"] = dict(pictures)
            return saved["rows"]
    path = common.build_path(cell_config)
    apply, params = init_model(cell_config, path, seed)
    state, seconds, _ = train(cell_config, path, apply, params, workdir, progress=False)
    data_fn = common.build_toy_dataset(cell_config)
    reference = np.asarray(data_fn(jax.random.key(20_000 + seed), config.eval.num_samples))
    cell = evaluate_grid(cell_config, path, apply, state.ema_params, reference, config.table.loglik_samples)
    rows = [{"path": name, "dataset": dataset, "seed": seed, "train_seconds": seconds, **r} for r in cell]
    pictures = rows[-1].pop("_samples")
    np.savez(samples_file, **pictures)
    with open(done, "w") as f:
        json.dump({"stamp": stamp, "rows": rows}, f)
    rows[-1]["_samples"] = pictures
    return rows


def floor_rows(config) -> list[dict]:
    """Each toy dataset's data-vs-data floor, per seed: W2, MMD and energy distance between the cells' evaluation
    reference and an independent draw of the same size (no model can beat it in expectation)."""
    rows = []
    for dataset in (d for d in config.table.datasets if d != "mnist"):
        data_fn = common.build_toy_dataset(row_config(config, config.table.paths[0], dataset))
        n = config.eval.num_samples
        for seed in range(config.table.seeds):
            reference = np.asarray(data_fn(jax.random.key(20_000 + seed), n))
            draw = np.asarray(data_fn(jax.random.key(30_000 + seed), n))
            rows.append({"path": FLOOR, "dataset": dataset, "seed": seed, "solver": "data", "steps": "",
                         "w2": fj.metrics.wasserstein2(draw, reference),
                         "mmd": float(fj.metrics.mmd(jnp.asarray(draw), jnp.asarray(reference))),
                         "energy": float(fj.metrics.energy_distance(jnp.asarray(draw), jnp.asarray(reference)))})
    return rows


def run_toys(config, out: str, progress=True) -> tuple[list[dict], dict]:
    rows, grids = [], defaultdict(dict)
    datasets = [d for d in config.table.datasets if d != "mnist"]
    jobs = [(config, name, dataset, seed, out) for dataset in datasets for name in config.table.paths
            for seed in range(config.table.seeds)]
    start = time.perf_counter()
    for (_, name, dataset, seed, _), cell in zip(jobs, pool.map_cells(toy_cell, jobs, config.table.workers)):
        for r in cell:
            samples = r.pop("_samples", None)
            if samples is not None and seed == 0:
                grids[dataset][name] = samples
            rows.append(r)
        if progress:
            last = [r for r in cell if r["solver"] == "euler"][-1]
            print(f"{name:>12s} {dataset:<12s} seed {seed}: W2 euler{last['steps']} {last['w2']:.3f} "
                  f"(trained in {cell[0]['train_seconds']:.1f} s; {time.perf_counter() - start:.0f} s since start)",
                  flush=True)
    return rows, grids


def run_mnist(config, out, progress=True) -> list[dict]:
    from experiments.train_images import train_and_evaluate as train_images

    rows, steps = [], config.table.mnist_steps
    for name in config.table.paths:
        try:
            module = importlib.import_module(f"experiments.configs.mnist_{name}")
        except ModuleNotFoundError:
            continue
        for seed in range(config.table.mnist_seeds):
            image_config = module.get_config()
            image_config.seed = seed
            image_config.train.steps = steps
            image_config.train.steps_per_call = math.gcd(steps, image_config.train.steps_per_call)
            image_config.eval.at_steps = (steps,)
            res = train_images(image_config, os.path.join(out, "compare_runs", f"mnist-{name}-{seed}"),
                               progress=False)
            r = res[-1]
            rows.append({"path": name, "dataset": "mnist", "seed": seed, "solver": r["solver"],
                         "steps": r["nfe"], "nfe": r["nfe"], "mnist_fid": r.get("mnist_fid"),
                         "train_seconds": r["train_seconds"]})
            if progress:
                print(f"{name:>12s} mnist        seed {seed}: MNIST-FID {r.get('mnist_fid')}", flush=True)
    return rows


def _mean_std(values) -> str:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "–"
    digits = 0 if np.all(v == np.round(v)) else 3  # NFE and step counts are integers
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if v.size > 1 else f"{v.mean():.{digits}f}"


def write_outputs(rows, grids, out, budget_name, euler_steps):
    """compare.csv (every row) and compare.md (per dataset: W2 by solver, metrics at Euler 100), plots."""
    euler_steps = list(euler_steps)
    groups = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["path"], r["solver"], r["steps"])].append(r)
    md = [f"# Side-by-side comparison ({budget_name} budget)\n\n",
          "W2/MMD/energy: distance of samples to held-out data (lower is better); KE and straightness of Euler-100 "
          "trajectories; log-lik: exact mean log-likelihood of held-out data (first-order paths with a density). "
          "Mean ± std over seeds.\n"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        md.append(f"\n## {dataset}\n\n")
        if dataset == "mnist":
            md.append("| path | solver | steps | MNIST-FID |\n|---|---|---|---|\n")
            for (d, p, s, st), g in groups.items():
                if d == dataset:
                    md.append(f"| {p} | {s} | {st} | {_mean_std([r['mnist_fid'] for r in g])} |\n")
            continue
        paths = list(dict.fromkeys(r["path"] for r in rows if r["dataset"] == dataset and r["path"] != FLOOR))
        floor = groups.get((dataset, FLOOR, "data", ""), [])
        if floor:
            md.append("Floor (data vs data: the evaluation reference against an independent draw of the same size, "
                      "mean ± std over seeds): " + ", ".join(f"{k} {_mean_std([r[k] for r in floor])}"
                                                            for k in ("w2", "mmd", "energy")) + ".\n\n")
        md.append("W2 by solver (NFE):\n\n| path | " + " | ".join(f"euler {s}" for s in euler_steps)
                  + " | " + " | ".join(f"heun {max(s // 2, 1)}" for s in euler_steps) + " | dopri5 (NFE) |\n")
        md.append("|---" * (2 * len(euler_steps) + 2) + "|\n")
        for p in paths:
            cells = [_mean_std([r["w2"] for r in groups[(dataset, p, "euler", s)]]) for s in euler_steps]
            cells += [_mean_std([r["w2"] for r in groups[(dataset, p, "heun", max(s // 2, 1))]]) for s in euler_steps]
            ad = groups[(dataset, p, "dopri5", "adaptive")]
            cells.append(f"{_mean_std([r['w2'] for r in ad])} ({_mean_std([r['nfe'] for r in ad])})")
            md.append(f"| {p} | " + " | ".join(cells) + " |\n")
        last = euler_steps[-1]
        md.append(f"\nAt Euler {last}: | path | W2 | MMD | energy | KE | straightness | log-lik |\n"
                  "|---|---|---|---|---|---|---|\n")
        for p in paths:
            g = groups[(dataset, p, "euler", last)]
            md.append(f"| {p} | " + " | ".join(_mean_std([r[k] for r in g]) for k in
                                              ("w2", "mmd", "energy", "kinetic_energy", "straightness",
                                               "log_likelihood")) + " |\n")
        for metric, suffix in (("w2", ""), ("mmd", "_mmd")):  # mean over seeds against NFE; the floor dashed
            series = {p: [np.nanmean([r[metric] for r in groups[(dataset, p, "euler", s)]]) for s in euler_steps]
                      for p in paths}
            hlines = {"data vs data": (float(np.mean([r[metric] for r in floor])), "--")} if floor else None
            plots.curves(euler_steps, series, os.path.join(out, f"compare_{dataset}{suffix}.png"),
                         xlabel="NFE (Euler steps)", ylabel=f"{metric.upper()} to data", title=dataset,
                         logy=metric == "w2", hlines=hlines, xticks=True)  # W2 spans 0.2 (trained) to 50 (VE, 2 steps)
        pictures = {p: grids.get(dataset, {}).get(p) for p in paths}
        if any(v is not None for v in pictures.values()):
            runs = [f"euler{s}" for s in euler_steps] + [k for k in next(v for v in pictures.values() if v is not None)
                                                         if not k.startswith(("euler", "trajectory"))]
            plots.panel_grid({(p, run): v[run] for p, v in pictures.items() if v is not None for run in runs}, paths,
                             runs, os.path.join(out, f"compare_samples_{dataset}.png"), title=f"{dataset} (seed 0)")
            plots.trajectory_grid({p: v["trajectory"] for p, v in pictures.items() if v is not None},
                                  os.path.join(out, f"compare_trajectories_{dataset}.png"),
                                  title=f"{dataset}: Euler-100 trajectories (seed 0)")
    md_path, _ = tables.write(rows, out, "compare", FIELDS, markdown_text="".join(md))
    return md_path


def main(config, workdir: str):
    try:
        pool.resolve_workers(config.table.workers)
    except ValueError as err:
        raise common.ConfigError(f"table.workers: {err}") from None
    for dataset in config.table.datasets:  # every cell's names and values, before the first step
        for name in config.table.paths:
            try:
                if dataset != "mnist":
                    validate(row_config(config, name, dataset))
            except ValueError as err:
                raise common.ConfigError(f"cell {name}/{dataset}: {err}") from None
    start = time.perf_counter()
    rows, grids = run_toys(config, workdir)
    rows += floor_rows(config)
    if "mnist" in config.table.datasets and config.table.mnist_steps:
        rows += run_mnist(config, workdir)
    md = write_outputs(rows, grids, workdir, config.table.budget, config.eval.step_counts)
    print(f"\ncomparison ({config.table.budget}) finished in {time.perf_counter() - start:.0f} s\ntable: {md}")


if __name__ == "__main__":
    common.run(main, "experiments/configs/compare.py", "results")
