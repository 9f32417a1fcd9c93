"""The main job: every registered toy-table path × {half-moons, 8 Gaussians, checkerboard}, one MLP, one budget.

    python -m experiments.toy_table --out results [--steps 2000] [--paths cond_ot,vp] [--datasets moons]

Writes `toy_table.md`, `toy_table.csv` and `toy_samples.png` (a grid: paths × datasets) under `--out`, plus each
run's own work directory (`runs/<path>-<dataset>/`: metrics.csv, results.json, plots).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time

import numpy as np

from experiments import registry
from experiments.configs import default
from experiments.train import train_and_evaluate

DATASETS = ["moons", "8gaussians", "checkerboard"]
COLUMNS = ["path", "dataset", "solver", "nfe", "w2", "mmd", "energy", "kinetic_energy", "straightness",
           "train_seconds", "final_loss"]


def run_table(out: str, paths: list[str], datasets: list[str], steps: int, seed: int = 0, progress: bool = True):
    """Train and evaluate every (path, dataset); return the table rows and the sample arrays for the grid."""
    rows, grid = [], {}
    for dataset in datasets:
        for name in paths:
            config = default.get_config()
            config.path, config.dataset, config.seed = name, dataset, seed
            config.train.steps = steps
            config.train.steps_per_call = math.gcd(steps, config.train.steps_per_call)
            config.eval.plots = False
            start = time.perf_counter()
            res = train_and_evaluate(config, os.path.join(out, "runs", f"{name}-{dataset}"), progress=progress)
            grid[(name, dataset)] = res.get("_samples")
            for tag, m in res.items():
                if isinstance(m, dict) and "nfe" in m:
                    rows.append({"path": name, "dataset": dataset, "solver": tag, "nfe": m["nfe"], "w2": m["w2"],
                                 "mmd": m["mmd"], "energy": m["energy"],
                                 "kinetic_energy": res.get("kinetic_energy"), "straightness": res.get("straightness"),
                                 "train_seconds": res["train_seconds"], "final_loss": res["final_loss"]})
            print(f"{name:>14s} on {dataset:<12s} W2(euler100)={res['euler100']['w2']:.3f} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    return rows, grid


def write_table(rows, out: str) -> tuple[str, str]:
    csv_path = os.path.join(out, "toy_table.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    md_path = os.path.join(out, "toy_table.md")
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    with open(md_path, "w") as f:
        f.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        for r in rows:
            f.write("| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |\n")
    return md_path, csv_path


def plot_grid(grid, paths, datasets, filename: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(paths), len(datasets), figsize=(2.6 * len(datasets), 2.6 * len(paths)),
                             squeeze=False)
    for i, name in enumerate(paths):
        for j, dataset in enumerate(datasets):
            ax = axes[i, j]
            x = grid.get((name, dataset))
            if x is not None:
                x = x[np.isfinite(x).all(-1)]
                ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5)
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
            if i == 0:
                ax.set_title(dataset)
    fig.tight_layout()
    fig.savefig(filename, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results")
    parser.add_argument("--steps", type=int, default=default.get_config().train.steps)
    parser.add_argument("--paths", default=",".join(registry.TOY_TABLE_PATHS))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    datasets = [d for d in args.datasets.split(",") if d]
    for name in paths:
        registry.get_path(name)  # unknown names fail here, before any training
    for name in datasets:
        registry.get_dataset(name)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    rows, grid = run_table(args.out, paths, datasets, args.steps, args.seed)
    md_path, csv_path = write_table(rows, args.out)
    png_path = os.path.join(args.out, "toy_samples.png")
    plot_grid(grid, paths, datasets, png_path)
    print(f"\n{len(paths)} paths x {len(datasets)} datasets in {time.perf_counter() - start:.0f} s")
    print(f"table: {md_path}\ncsv:   {csv_path}\nplot:  {png_path}")


if __name__ == "__main__":
    main()
