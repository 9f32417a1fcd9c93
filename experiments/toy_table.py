"""The main job: every toy-table path × {half-moons, 8 Gaussians, checkerboard}, one MLP, one budget.

    python -m experiments.toy_table --config experiments/configs/toy_table.py --workdir results

Writes `toy_table.md`, `toy_table.csv` and `toy_samples.png` (a grid: paths × datasets) under `--workdir`, plus each
run's own work directory (`runs/<path>-<dataset>/`: checkpoints, metrics.csv, results.json), so an interrupted
table resumes where it stopped.
"""

from __future__ import annotations

import os
import time

from experiments import common, plots, tables
from experiments.configs import default
from experiments.configs.toy_paths import DATASET_SETTINGS
from experiments.train import train_and_evaluate, validate

COLUMNS = ["path", "dataset", "solver", "nfe", "w2", "mmd", "energy", "kinetic_energy", "straightness",
           "train_seconds", "final_loss"]


def row_config(table_config, label: str, dataset: str, seed: int | None = None):
    """The run config of one (path label, dataset label) cell of a table config: the table's model, train, eval,
    log and seed blocks with the row's path and dataset settings (`configs/toy_paths.py`)."""
    c = default.get_config(label)
    if dataset not in DATASET_SETTINGS:
        raise common.ConfigError(f"unknown toy dataset label {dataset!r}; known: {', '.join(DATASET_SETTINGS)}")
    name, kwargs = DATASET_SETTINGS[dataset]
    c.dataset = default.spec(name, **kwargs)
    for block in ("model", "train", "eval", "log"):
        c[block] = table_config[block]
    c.seed = table_config.seed if seed is None else seed
    return c


def run_table(config, out: str, progress: bool = True):
    """Train and evaluate every (path, dataset); return the table rows and the sample arrays for the grid."""
    cells = [(label, d) for d in config.table.datasets for label in config.table.paths]
    for label, dataset in cells:  # every name checked before the first step
        try:
            validate(row_config(config, label, dataset))
        except ValueError as err:
            raise common.ConfigError(f"table row {label}/{dataset}: {err}") from None
    rows, grid = [], {}
    for label, dataset in cells:
        start = time.perf_counter()
        res = train_and_evaluate(row_config(config, label, dataset), os.path.join(out, "runs", f"{label}-{dataset}"),
                                 progress=progress)
        grid[(label, dataset)] = res.get("_samples")
        for tag, m in res.items():
            if isinstance(m, dict) and "nfe" in m:
                rows.append({"path": label, "dataset": dataset, "solver": tag, **m,
                             "kinetic_energy": res.get("kinetic_energy"), "straightness": res.get("straightness"),
                             "train_seconds": res["train_seconds"], "final_loss": res["final_loss"]})
        last = [t for t in res if isinstance(res[t], dict) and "w2" in res[t]][-1]
        print(f"{label:>14s} on {dataset:<12s} W2({last})={res[last]['w2']:.3f} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    return rows, grid


def main(config, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    rows, grid = run_table(config, workdir)
    md_path, csv_path = tables.write(rows, workdir, "toy_table", COLUMNS)
    png_path = os.path.join(workdir, "toy_samples.png")
    plots.panel_grid(grid, list(config.table.paths), list(config.table.datasets), png_path)
    print(f"\n{len(config.table.paths)} paths x {len(config.table.datasets)} datasets in "
          f"{time.perf_counter() - start:.0f} s")
    print(f"table: {md_path}\ncsv:   {csv_path}\nplot:  {png_path}")


if __name__ == "__main__":
    common.run(main, "experiments/configs/toy_table.py", "results")
