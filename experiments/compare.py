"""The side-by-side comparison: every registered path, same network, optimiser, steps and batch per dataset.

    python -m experiments.compare [--budget default|quick] [--out results] [--paths ...] [--datasets ...]

Toy datasets (half-moons, 8 Gaussians, checkerboard, the 3×3 Dirac-mode grid): each path trains the toy MLP
for `steps` with `seeds` seeds, then samples with Euler at 2/4/8/16/32/100 steps, Heun at the same NFE
(1/2/4/8/16/50 steps) and adaptive Dopri5 (NFE reported). Per cell: W2 (exact, POT), MMD, energy distance,
kinetic energy and straightness of Euler-100 trajectories, and the exact mean log-likelihood of held-out data
where the path's source has a density (first-order paths with a Gaussian source). Mean ± std over seeds.
MNIST (offline digits, small U-Net, MNIST-FID) runs through `experiments.train_images` for every path that has
an `experiments/configs/mnist_<path>.py`.

Writes `compare.md`, `compare.csv` (one row per path × dataset × solver × seed), `compare_<dataset>.png`
(W2 against NFE, one curve per path) and `compare_samples_<dataset>.png` under `--out`.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import time
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

import fm_jax as fj
from experiments import registry
from experiments.configs import default
from experiments.toy_table import plot_grid
from experiments.train import DATA_SHAPE, init_model, train

TOY_DATASETS = ["moons", "8gaussians", "checkerboard", "grid_dirac"]
EULER_STEPS = [2, 4, 8, 16, 32, 100]
BUDGETS = {
    # steps: training steps per toy run; mnist_steps: U-Net steps per MNIST run (0: skip MNIST).
    "default": dict(steps=1500, seeds=3, num_samples=1000, loglik_samples=200, mnist_steps=500, mnist_seeds=3),
    "quick": dict(steps=600, seeds=1, num_samples=500, loglik_samples=0, mnist_steps=100, mnist_seeds=1),
}
FIELDS = ["path", "dataset", "seed", "solver", "steps", "nfe", "w2", "mmd", "energy", "kinetic_energy",
          "straightness", "log_likelihood", "mnist_fid", "train_seconds"]


def evaluate_grid(config, path, apply, params, reference, loglik_samples: int) -> list[dict]:
    """All solver settings for one trained model; one row each."""
    key = jax.random.key(config.seed + 10_000)
    n = config.eval.num_samples
    ref = jnp.asarray(reference)
    runs = [("euler", s) for s in EULER_STEPS] + [("heun", max(s // 2, 1)) for s in EULER_STEPS] + [("dopri5", None)]
    rows = []
    for solver, steps in runs:
        res = fj.sample(key, path, apply, params, n, DATA_SHAPE, solver=registry.get_solver(solver), num_steps=steps)
        x = np.asarray(res.samples)
        finite = np.isfinite(x).all(-1)
        rows.append({"solver": solver, "steps": steps if steps is not None else "adaptive", "nfe": int(res.nfe),
                     "w2": fj.metrics.wasserstein2(x, reference[:n]) if finite.all() else math.nan,
                     "mmd": float(fj.metrics.mmd(jnp.asarray(x), ref)),
                     "energy": float(fj.metrics.energy_distance(jnp.asarray(x), ref))})
    res = fj.sample(key, path, apply, params, n, DATA_SHAPE, solver=registry.get_solver("euler"), num_steps=100,
                    save_trajectory=101)
    traj = jax.vmap(path.readout)(res.trajectory)
    ke = float(fj.metrics.kinetic_energy(traj, res.ts))
    straight = float(fj.metrics.straightness(traj, res.ts))
    loglik = None
    if loglik_samples:
        try:
            lp, _ = fj.log_likelihood(path, apply, params, ref[:loglik_samples])
            loglik = float(jnp.mean(lp))
        except (NotImplementedError, TypeError, ValueError):
            loglik = None  # no source density, or a phase-space state: no exact likelihood of x alone
    for r in rows:
        r.update(kinetic_energy=ke, straightness=straight, log_likelihood=loglik)
    rows[-1]["_samples"] = np.asarray(traj[-1])
    return rows


def run_toys(paths, datasets, budget, out, progress=True) -> tuple[list[dict], dict]:
    rows, grids = [], defaultdict(dict)
    for dataset in datasets:
        data_fn = registry.get_dataset(dataset)
        for name in paths:
            for seed in range(budget["seeds"]):
                start = time.perf_counter()
                config = default.get_config()
                config.path, config.dataset, config.seed = name, dataset, seed
                config.train.steps = budget["steps"]
                config.train.steps_per_call = math.gcd(budget["steps"], 100)
                config.eval.num_samples = budget["num_samples"]
                path = registry.get_path(name)
                apply, params = init_model(config, path, seed)
                state, seconds, _ = train(config, path, apply, params, None, progress=False)
                reference = np.asarray(data_fn(jax.random.key(20_000 + seed), budget["num_samples"]))
                cell = evaluate_grid(config, path, apply, state.ema_params, reference, budget["loglik_samples"])
                for r in cell:
                    samples = r.pop("_samples", None)
                    if samples is not None and seed == 0:
                        grids[dataset][name] = samples
                    rows.append({"path": name, "dataset": dataset, "seed": seed, "train_seconds": seconds, **r})
                if progress:
                    e100 = next(r for r in cell if r["solver"] == "euler" and r["steps"] == 100)
                    print(f"{name:>12s} {dataset:<12s} seed {seed}: W2 euler100 {e100['w2']:.3f} "
                          f"({time.perf_counter() - start:.1f} s)", flush=True)
    return rows, grids


def run_mnist(paths, budget, out, progress=True) -> list[dict]:
    from experiments.train_images import train_and_evaluate as train_images

    rows = []
    for name in paths:
        try:
            module = importlib.import_module(f"experiments.configs.mnist_{name}")
        except ModuleNotFoundError:
            continue
        for seed in range(budget["mnist_seeds"]):
            config = module.get_config()
            config.seed = seed
            config.train.steps = budget["mnist_steps"]
            config.train.steps_per_call = math.gcd(budget["mnist_steps"], 50)
            config.eval.at_steps = (budget["mnist_steps"],)
            res = train_images(config, os.path.join(out, "compare_runs", f"mnist-{name}-{seed}"), progress=False)
            r = res[-1]
            rows.append({"path": name, "dataset": "mnist", "seed": seed, "solver": r["solver"],
                         "steps": r["num_steps"], "nfe": r["num_steps"], "mnist_fid": r.get("mnist_fid"),
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


def write_outputs(rows, grids, out, budget_name):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compare.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    groups = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["path"], r["solver"], r["steps"])].append(r)
    md = [f"# Side-by-side comparison ({budget_name} budget)\n",
          "W2/MMD/energy: distance of samples to held-out data (lower is better); KE and straightness of Euler-100 "
          "trajectories; log-lik: exact mean log-likelihood of held-out data (first-order paths with a density). "
          "Mean ± std over seeds.\n"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for dataset in datasets:
        md.append(f"\n## {dataset}\n")
        if dataset == "mnist":
            md.append("| path | solver | steps | MNIST-FID |\n|---|---|---|---|\n")
            for (d, p, s, st), g in groups.items():
                if d == dataset:
                    md.append(f"| {p} | {s} | {st} | {_mean_std([r['mnist_fid'] for r in g])} |\n")
            continue
        paths = list(dict.fromkeys(r["path"] for r in rows if r["dataset"] == dataset))
        md.append("W2 by solver (NFE):\n\n| path | " + " | ".join(f"euler {s}" for s in EULER_STEPS)
                  + " | " + " | ".join(f"heun {max(s // 2, 1)}" for s in EULER_STEPS) + " | dopri5 (NFE) |\n")
        md.append("|---" * (2 * len(EULER_STEPS) + 2) + "|\n")
        for p in paths:
            cells = [_mean_std([r["w2"] for r in groups[(dataset, p, "euler", s)]]) for s in EULER_STEPS]
            cells += [_mean_std([r["w2"] for r in groups[(dataset, p, "heun", max(s // 2, 1))]]) for s in EULER_STEPS]
            ad = groups[(dataset, p, "dopri5", "adaptive")]
            cells.append(f"{_mean_std([r['w2'] for r in ad])} ({_mean_std([r['nfe'] for r in ad])})")
            md.append(f"| {p} | " + " | ".join(cells) + " |\n")
        md.append("\nAt Euler 100: | path | W2 | MMD | energy | KE | straightness | log-lik |\n"
                  "|---|---|---|---|---|---|---|\n")
        for p in paths:
            g = groups[(dataset, p, "euler", 100)]
            md.append(f"| {p} | " + " | ".join(_mean_std([r[k] for r in g]) for k in
                                              ("w2", "mmd", "energy", "kinetic_energy", "straightness",
                                               "log_likelihood")) + " |\n")
        _plot_w2_vs_nfe(rows, dataset, paths, os.path.join(out, f"compare_{dataset}.png"))
        if grids.get(dataset):
            plot_grid({(p, dataset): grids[dataset].get(p) for p in paths}, paths, [dataset],
                      os.path.join(out, f"compare_samples_{dataset}.png"))
    path_md = os.path.join(out, "compare.md")
    with open(path_md, "w") as f:
        f.writelines(md)
    return path_md


def _plot_w2_vs_nfe(rows, dataset, paths, filename):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in paths:
        w2 = [np.nanmean([r["w2"] for r in rows if r["dataset"] == dataset and r["path"] == p
                          and r["solver"] == "euler" and r["steps"] == s]) for s in EULER_STEPS]
        ax.plot(EULER_STEPS, w2, marker="o", label=p)
    ax.set_xscale("log")
    ax.set_xlabel("NFE (Euler steps)")
    ax.set_ylabel("W2 to data")
    ax.set_title(dataset)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(filename, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="default")
    parser.add_argument("--out", default="results")
    parser.add_argument("--paths", default=",".join(registry.TOY_TABLE_PATHS))
    parser.add_argument("--datasets", default=",".join(TOY_DATASETS + ["mnist"]))
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget]
    paths = [p for p in args.paths.split(",") if p]
    datasets = [d for d in args.datasets.split(",") if d]
    for p in paths:
        registry.get_path(p)
    for d in datasets:
        if d != "mnist":
            registry.get_dataset(d)
    start = time.perf_counter()
    rows, grids = run_toys(paths, [d for d in datasets if d != "mnist"], budget, args.out)
    if "mnist" in datasets and budget["mnist_steps"]:
        rows += run_mnist(paths, budget, args.out)
    md = write_outputs(rows, grids, args.out, args.budget)
    print(f"\ncomparison ({args.budget}) finished in {time.perf_counter() - start:.0f} s\ntable: {md}")


if __name__ == "__main__":
    main()
