"""The main job: every toy-table path × {half-moons, 8 Gaussians, checkerboard}, one MLP, one budget.

    python -m experiments.toy_table --config experiments/configs/toy_table.py --workdir results

Writes `toy_table.md`, `toy_table.csv` and `toy_samples.png` (a grid: paths × datasets) under `--workdir`, plus each
run's own work directory (`runs/<path>-<dataset>/`: checkpoints, metrics.csv, results.json), so an interrupted
table resumes where it stopped.
"""

from __future__ import annotations

import os
import time

import numpy as np

from experiments import common, plots, pool, tables
from experiments.configs import default
from experiments.configs.toy_paths import DATASET_SETTINGS
from experiments.train import distances, reference_samples, train_and_evaluate, validate

FLOOR_LABEL = "data vs data"  # the row of each dataset holding its metrics' sampling floor
FLOOR_DRAWS = 5  # independent data draws, each scored against the evaluation reference: mean ± standard error
# Paths proven identical to a table row (tests/test_hamiltonian.py::test_hgf_equals_affine_path): trained, they
# would repeat that row.
IDENTICAL_PATHS = {"hgf_osc": "cosine", "hgf_zero_ot": "cond_ot", "hgf_zero_ve": "ve"}
NOTE = (f"Row `data vs data`: the metrics between the evaluation reference and an independent draw of the dataset "
        f"of the same size (mean ± standard error over {FLOOR_DRAWS} draws), the sampling floor no model can beat. "
        "Not trained because the tests prove them identical to a row: "
        + ", ".join(f"`{a}` = `{b}`" for a, b in IDENTICAL_PATHS.items()) + ".\n\n")

# Paths whose cells take longest (Kac's Bessel-function target): their jobs start first.
SLOW_PATHS = ("kac",)

COLUMNS = ["path", "dataset", "solver", "nfe", "w2", "w2_se", "sw2", "mmd", "energy", "kinetic_energy", "straightness",
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
    try:
        workers = pool.resolve_workers(config.table.workers)
    except ValueError as err:
        raise common.ConfigError(f"table.workers: {err}") from None
    for label, dataset in cells:  # every name checked before the first step
        try:
            validate(row_config(config, label, dataset))
        except ValueError as err:
            raise common.ConfigError(f"table row {label}/{dataset}: {err}") from None
    # One job per cell, the slowest paths first, so the workers finish within one cell of each other; a worker
    # keeps its compiled train loops and samplers, so a path's second cell in the same worker compiles nothing
    # (measured: the same wall time as one job per path, 862 s against 860 s). The floors are one short job,
    # computed in a worker too.
    paths = sorted(config.table.paths, key=lambda label: label not in SLOW_PATHS)
    jobs = [("floor", [(dataset, row_config(config, config.table.paths[0], dataset), None)
                       for dataset in config.table.datasets])]
    jobs += [(label, [(dataset, row_config(config, label, dataset), os.path.join(out, "runs", f"{label}-{dataset}"))])
             for label in paths for dataset in config.table.datasets]
    results, start = {}, time.perf_counter()
    for (label, _), got in zip(jobs, pool.map_cells(_table_job, jobs, workers)):
        for dataset, res in got:
            results[(label, dataset)] = res
            if progress and label != "floor":
                last = [t for t in res if isinstance(res[t], dict) and "w2" in res[t]][-1]
                print(f"{label:>14s} on {dataset:<12s} W2({last})={res[last]['w2']:.3f} (trained in "
                      f"{res['train_seconds']:.1f} s; {time.perf_counter() - start:.0f} s since start)", flush=True)
    rows = [{"path": FLOOR_LABEL, "dataset": d, "solver": "data", **results[("floor", d)]}
            for d in config.table.datasets]
    grid = {}
    for label, dataset in cells:
        res = results[(label, dataset)]
        grid[(label, dataset)] = res.get("_samples")
        for tag, m in res.items():
            if isinstance(m, dict) and "nfe" in m:
                rows.append({"path": label, "dataset": dataset, "solver": tag, **m,
                             "kinetic_energy": res.get("kinetic_energy"), "straightness": res.get("straightness"),
                             "train_seconds": res["train_seconds"], "final_loss": res["final_loss"]})
    return rows, grid


def _table_job(job) -> list[tuple[str, dict]]:
    """One job of `run_table` (module level: `pool` pickles it): ("floor", cells) → each dataset's data-vs-data
    metrics; (path label, cells) → `train_and_evaluate` of each (dataset, config, workdir) cell."""
    label, cells = job
    if label == "floor":
        out = []
        for dataset, c, _ in cells:
            data_fn = common.build_toy_dataset(c)
            reference = reference_samples(c, data_fn)
            draws = [distances(reference_samples(c, data_fn, draw=k), reference, c.eval)
                     for k in range(1, FLOOR_DRAWS + 1)]
            floor = {}
            for metric in (m for m in draws[0] if not m.endswith("_se")):  # the se over draws replaces a draw's own
                v = np.array([d[metric] for d in draws])
                floor[metric], floor[f"{metric}_se"] = float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))
            out.append((dataset, floor))
        return out
    return [(dataset, train_and_evaluate(c, workdir, progress=False)) for dataset, c, workdir in cells]


def summary(rows: list[dict], datasets, seconds: float) -> str:
    """The compact Markdown of the README: one row per path (the floor first), per dataset "W2 of each solver run
    (± its standard error for the run with the most Euler steps, the adaptive one's NFE if any) · sliced W2 of the last
    · that Euler W2 as a multiple of the floor's", then the kinetic energy of the first dataset."""
    solvers = list(dict.fromkeys(r["solver"] for r in rows if r["path"] != FLOOR_LABEL))
    labels = list(dict.fromkeys(r["path"] for r in rows))
    cell = {(r["path"], r["dataset"], r["solver"]): r for r in rows}
    head = " / ".join(solvers)
    fine = max((s for s in solvers if s.startswith("euler")), key=lambda s: int(s[5:]), default=solvers[-1])
    heads = " | ".join(f"{d}: W2 {head} · SW2 · {fine} ÷ floor" for d in datasets)
    lines = [f"| path | {heads} | KE ({datasets[0]}) |",
             "|---|" + "---|" * (len(datasets) + 1)]
    for label in labels:
        parts = []
        for d in datasets:
            if label == FLOOR_LABEL:
                r = cell[(label, d, "data")]
                parts.append(f"{r['w2']:.3f} ± {r['w2_se']:.3f} · {r['sw2']:.3f} ± {r['sw2_se']:.3f}")
                continue
            runs = [cell[(label, d, s)] for s in solvers]
            w2 = " / ".join(f"{r['w2']:.3f}" + (f" ± {r['w2_se']:.3f}" if s == fine else "")
                            + (f" ({r['nfe']})" if s == solvers[-1] and s != fine else "")
                            for s, r in zip(solvers, runs))
            ratio = cell[(label, d, fine)]["w2"] / cell[(FLOOR_LABEL, d, "data")]["w2"]
            parts.append(f"{w2} · {runs[-1]['sw2']:.3f} · {ratio:.2f}×")
        ke = "" if label == FLOOR_LABEL else f"{cell[(label, datasets[0], solvers[-1])]['kinetic_energy']:.2f}"
        lines.append(f"| {label} | {' | '.join(parts)} | {ke} |")
    return (NOTE + "\n".join(lines) + f"\n\nWall time {seconds / 60:.1f} min.\n\n## Every row\n\n"
            + tables.markdown(rows, COLUMNS))


def main(config, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    rows, grid = run_table(config, workdir)
    md_path, csv_path = tables.write(rows, workdir, "toy_table", COLUMNS, markdown_text=summary(
        rows, list(config.table.datasets), time.perf_counter() - start))
    png_path = os.path.join(workdir, "toy_samples.png")
    plots.panel_grid(grid, list(config.table.paths), list(config.table.datasets), png_path)
    print(f"\n{len(config.table.paths)} paths x {len(config.table.datasets)} datasets in "
          f"{time.perf_counter() - start:.0f} s")
    print(f"table: {md_path}\ncsv:   {csv_path}\nplot:  {png_path}")


if __name__ == "__main__":
    common.run(main, "experiments/configs/toy_table.py", "results")
