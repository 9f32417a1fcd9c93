"""The MNIST-5k table: path × MNIST-FID at a few training step counts (CPU-sized U-Net, `configs/image_base.mnist`).

    python -m experiments.mnist_table --config experiments/configs/mnist_table.py --workdir results/images
    python -m experiments.mnist_table --workdir results/images --config.table.collect='("run_a", "run_b")'

Each path trains the same U-Net with the same data stream and seed; FID uses the cached MNIST classifier's
64-d features, `num_samples` EMA samples (Euler, `eval.step_counts` steps) against the 4,500 training digits. The
row "real test digits" is the FID of the 500 held-out real digits: the floor at this sample size.
Writes `mnist_table.{md,csv}` and per-path work directories (checkpoints, resumable) with sample grids.
"""

from __future__ import annotations

import importlib
import os
import time

from experiments import common, tables
from experiments.train_images import train_and_evaluate, validate


def row_config(config, label: str):
    """`configs/mnist_<label>.py`'s path with the table's other blocks."""
    try:
        c = importlib.import_module(f"experiments.configs.mnist_{label}").get_config()
    except ModuleNotFoundError:
        raise common.ConfigError(f"no config experiments/configs/mnist_{label}.py for table row {label!r}") from None
    for block in ("dataset", "model", "train", "eval", "log"):
        c[block] = config[block]
    c.seed = config.seed
    return c


def main(config, workdir: str) -> None:
    collect = [d for d in config.table.collect if d]
    if collect:
        rows = [r for d in collect for r in tables.read_csv(os.path.join(d, "mnist_table.csv"))]
        write_table(rows, workdir)
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
        got = train_and_evaluate(run_config, os.path.join(workdir, f"mnist_{label}"))
        print(f"{label}: {time.perf_counter() - start:.0f} s")
        rows += [{**r, "path": label} for r in got]
        write_table(rows, workdir)


def write_table(rows: list[dict], out: str) -> None:
    """Markdown (path × step count, MNIST-FID of the first solver run) and long-form CSV."""
    first = rows[0]
    solver = first["solver"]
    rows_md = [r for r in rows if r["solver"] == solver]
    steps = sorted({r["step"] for r in rows_md})
    fid = {(r["path"], r["step"]): r.get("mnist_fid", float("nan")) for r in rows_md}
    secs = {(r["path"], r["step"]): r["train_seconds"] for r in rows_md}
    lines = [
        f"MNIST-5k, MNIST-FID (classifier features, {first['num_samples']} samples, {solver}; lower is better). "
        f"U-Net {first['params']:,} parameters.",
        "",
        "| path | " + " | ".join(f"{s} steps" for s in steps) + " | train s (last) |",
        "|---|" + "---|" * (len(steps) + 1),
    ]
    for p in dict.fromkeys(r["path"] for r in rows_md):
        cells = [f"{fid.get((p, s), float('nan')):.2f}" for s in steps]
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {secs.get((p, steps[-1]), float('nan')):.0f} |")
    lines.append("| real test digits | " + " | ".join(f"{first.get('real_test_fid', float('nan')):.2f}"
                                                     for _ in steps) + " | |")
    lines += ["", f"Classifier test accuracy: {first.get('classifier_accuracy', float('nan')):.3f}"]
    text = "\n".join(lines) + "\n"
    tables.write(rows, out, "mnist_table", markdown_text=text)
    print(text)


if __name__ == "__main__":
    common.run(main, "experiments/configs/mnist_table.py", "results/images")
