"""One image table per dataset: every path side by side, trained with the same U-Net, data stream and seed.

    python -m experiments.image_table --config experiments/configs/cifar10_table.py --workdir results/cifar10
    python -m experiments.image_table --config experiments/configs/mnist_table.py --workdir results/images
    python -m experiments.image_table --config experiments/configs/cifar10_table.py --workdir results/cifar10 \
        --config.table.collect='("run_a", "run_b")'      # only merge the CSVs of earlier runs

Each row `<label>` of `table.paths` is `configs/<table.dataset>_<label>.py`'s path (with `table.path_kwargs[label]`
over its keywords, and its own `eval.edm_sampler` if it sets one) under the table's dataset, model, train, eval,
log and seed blocks, trained and evaluated by `experiments.train_images` in `<workdir>/<dataset>_<label>/`
(checkpoints: an interrupted table resumes where it stopped; a finished row is not retrained).

Writes `<dataset>_table.csv` (every evaluation row: path, step, solver, FID, NFE, bits/dim, kinetic energy …) and
`<dataset>_table.md`: at the last evaluated step, one line per path with FID per solver run (Euler step counts,
the adaptive solver and its NFE, EDM's sampler where a path has it), bits/dim ± standard error, kinetic energy
per dimension and training time; then FID of the first solver run at every evaluated step, and the FID of as many
real test images (the floor at this sample size). Each path's last sample grid is copied to
`<dataset>_<label>_samples.png`.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import time

from experiments import common, tables
from experiments.train_images import start_processes, train_and_evaluate, validate


def row_config(config, label: str):
    """`configs/<table.dataset>_<label>.py`'s path (and `eval.edm_sampler`) with the table's other blocks."""
    prefix = config.table.dataset
    try:
        c = importlib.import_module(f"experiments.configs.{prefix}_{label}").get_config()
    except ModuleNotFoundError:
        raise common.ConfigError(f"no config experiments/configs/{prefix}_{label}.py for table row {label!r}") from None
    edm = c.eval.get("edm_sampler")
    for block in ("dataset", "model", "train", "eval", "log"):
        c[block] = config[block].copy_and_resolve_references()
    if edm is not None:
        with c.eval.unlocked():
            c.eval.edm_sampler = edm
    overrides = config.table.get("path_kwargs", {}).get(label)
    if overrides:
        kwargs = common.spec_kwargs(c.path)
        kwargs.update(overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides))
        c.path.kwargs = kwargs
    c.seed = config.seed
    return c


def table_name(config) -> str:
    return f"{config.table.dataset}_table"


def main(config, workdir: str) -> None:
    start_processes(config)
    name = table_name(config)
    collect = [d for d in config.table.collect if d]
    if collect:
        rows = [r for d in collect for r in tables.read_csv(os.path.join(d, f"{name}.csv"))]
        write_table(rows, workdir, name)
        return
    runs = {label: row_config(config, label) for label in config.table.paths}
    for label, run_config in runs.items():  # every name and value, before the first step
        try:
            validate(run_config)
        except ValueError as err:
            raise common.ConfigError(f"table row {label}: {err}") from None
    rows = []
    for label, run_config in runs.items():
        start = time.perf_counter()
        run_dir = os.path.join(workdir, f"{config.table.dataset}_{label}")
        got = train_and_evaluate(run_config, run_dir)
        print(f"{label}: {time.perf_counter() - start:.0f} s", flush=True)
        rows += [{**r, "path": label} for r in got]
        if got:
            grid = os.path.join(run_dir, f"samples_{max(r['step'] for r in got)}.png")
            if os.path.exists(grid):
                shutil.copyfile(grid, os.path.join(workdir, f"{config.table.dataset}_{label}_samples.png"))
        write_table(rows, workdir, name)


def _fid_key(rows: list[dict]) -> str:
    return "fid" if any("fid" in r for r in rows) else "mnist_fid"


def _num(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def _fmt(value, digits: int = 2) -> str:
    v = _num(value)
    return "—" if math.isnan(v) else f"{v:.{digits}f}"


def markdown_table(rows: list[dict], dataset: str) -> str:
    """The Markdown text of `write_table` (see the module docstring)."""
    fid = _fid_key(rows)
    last = max(r["step"] for r in rows)
    final = [r for r in rows if r["step"] == last]
    solvers = list(dict.fromkeys(r["solver"] for r in final))
    paths = list(dict.fromkeys(r["path"] for r in rows))
    cell = {(r["path"], r["solver"]): r for r in final}
    first = final[0]
    # Runs whose NFE is not their step count: adaptive solvers, EDM's Heun (2N − 1).
    with_nfe = {r["solver"] for r in final if r.get("solver_steps") == "adaptive" or r["solver"].startswith("edm")}
    header = [f"FID {s}" + (" (NFE)" if s in with_nfe else "") for s in solvers]
    lines = [
        f"{dataset}: {'Inception FID' if fid == 'fid' else 'MNIST-classifier FID'} of {first['num_samples']} EMA "
        f"samples at step {last} (lower is better), bits/dim of the test images ± standard error (— where the path "
        f"has no density: Kac law, phase space), kinetic energy per dimension E∫|dx/dt|²dt/D of the Euler "
        f"trajectories with the most steps. U-Net {int(first['params']):,} parameters.",
        "",
        "| path | " + " | ".join(header) + " | bits/dim | KE/dim | train s |",
        "|---|" + "---|" * (len(solvers) + 3),
    ]
    for p in paths:
        cells = []
        for s in solvers:
            r = cell.get((p, s))
            if r is None:
                cells.append("—")
                continue
            text = _fmt(r.get(fid))
            if s in with_nfe:
                text += f" ({int(_num(r.get('nfe')))})" if not math.isnan(_num(r.get("nfe"))) else ""
            cells.append(text)
        any_row = next((cell[(p, s)] for s in solvers if (p, s) in cell), {})
        bpd = _fmt(any_row.get("bits_per_dim"), 3)
        if bpd != "—":
            bpd += f" ± {_fmt(any_row.get('bits_per_dim_se'), 3)}"
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {bpd} | {_fmt(any_row.get('kinetic_energy_per_dim'), 3)}"
                     f" | {_fmt(any_row.get('train_seconds'), 0)} |")
    lines.append("| real test images | " + " | ".join(_fmt(first.get("real_test_fid")) for _ in solvers) + " | | | |")
    steps = sorted({r["step"] for r in rows})
    if len(steps) > 1:
        s0 = solvers[0]
        by = {(r["path"], r["step"]): r.get(fid) for r in rows if r["solver"] == s0}
        lines += ["", f"FID ({s0}) by training step:", "",
                  "| path | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|" + "---|" * len(steps)]
        lines += [f"| {p} | " + " | ".join(_fmt(by.get((p, s))) for s in steps) + " |" for p in paths]
    if "classifier_accuracy" in first:
        lines += ["", f"Classifier test accuracy: {_fmt(first.get('classifier_accuracy'), 3)}"]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], out: str, name: str) -> tuple[str, str]:
    """`<name>.md` (`markdown_table`) and the long-form `<name>.csv` of every evaluation row."""
    dataset = name.removesuffix("_table")
    text = markdown_table(rows, dataset)
    paths = tables.write(rows, out, name, markdown_text=text)
    print(text, flush=True)
    return paths


if __name__ == "__main__":
    common.run(main, "experiments/configs/cifar10_table.py", "results/cifar10")
