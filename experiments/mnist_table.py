"""The MNIST-5k table: path × MNIST-FID at a few training step counts (CPU-sized U-Net, `configs/image_base.mnist`).

    python -m experiments.mnist_table --paths cond_ot,vp --steps 1000 --at_steps 250,500,1000
    python -m experiments.mnist_table --collect results/images/run_a,results/images/run_b   # merge runs

Each path trains the same U-Net with the same data stream and seed; FID uses the cached MNIST classifier's
64-d features, `num_samples` EMA samples (Euler, `num_steps` steps) against the 4,500 training digits. The
row "real test digits" is the FID of the 500 held-out real digits: the floor at this sample size.
Writes `results/images/mnist_table.{md,csv}` and per-path work directories with sample grids.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import time

from experiments import registry
from experiments.train_images import train_and_evaluate

DEFAULT_PATHS = ["cond_ot", "vp", "ko", "kac", "hgf", "form"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS), help="registered path names, comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--at_steps", default=None, help="step counts to evaluate, comma-separated")
    parser.add_argument("--num_samples", type=int, default=None)
    parser.add_argument("--num_steps", type=int, default=None, help="sampler steps")
    parser.add_argument("--out", default="results/images")
    parser.add_argument("--collect", default=None,
                        help="only merge the mnist_table.csv of these output directories (comma-separated) into --out")
    args = parser.parse_args(argv)
    if args.collect:
        rows = []
        for d in args.collect.split(","):
            with open(os.path.join(d, "mnist_table.csv")) as f:
                rows += [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
        write_table(rows, args.out)
        return

    rows = []
    for name in args.paths.split(","):
        if name not in registry.PATHS:
            print(f"skipping {name!r}: not registered (known: {', '.join(sorted(registry.PATHS))})")
            continue
        try:
            config = importlib.import_module(f"experiments.configs.mnist_{name}").get_config()
        except ModuleNotFoundError:
            from experiments.configs.image_base import mnist

            config = mnist(name)
        if args.steps is not None:
            config.train.steps = args.steps
        if args.at_steps is not None:
            config.eval.at_steps = tuple(int(s) for s in args.at_steps.split(","))
        if args.num_samples is not None:
            config.eval.num_samples = args.num_samples
        if args.num_steps is not None:
            config.eval.num_steps = args.num_steps
        start = time.perf_counter()
        try:
            got = train_and_evaluate(config, os.path.join(args.out, f"mnist_{name}"))
        except Exception as err:  # one failing path must not lose the others' rows
            print(f"{name}: failed: {type(err).__name__}: {err}")
            continue
        print(f"{name}: {time.perf_counter() - start:.0f} s")
        rows += got
        write_table(rows, args.out)


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def write_table(rows: list[dict], out: str) -> None:
    """Markdown (path × step count, MNIST-FID) and long-form CSV."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "mnist_table.csv"), "w", newline="") as f:
        fields = sorted({k for r in rows for k in r})
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    steps = sorted({r["step"] for r in rows})
    paths = list(dict.fromkeys(r["path"] for r in rows))
    fid = {(r["path"], r["step"]): r.get("mnist_fid", float("nan")) for r in rows}
    secs = {(r["path"], r["step"]): r["train_seconds"] for r in rows}
    first = rows[0]
    lines = [
        f"MNIST-5k, MNIST-FID (classifier features, {first['num_samples']} samples, {first['solver']} "
        f"{first['num_steps']} steps; lower is better). U-Net {first['params']:,} parameters.",
        "",
        "| path | " + " | ".join(f"{s} steps" for s in steps) + " | train s (last) |",
        "|---|" + "---|" * (len(steps) + 1),
    ]
    for p in paths:
        cells = [f"{fid.get((p, s), float('nan')):.2f}" for s in steps]
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {secs.get((p, steps[-1]), float('nan')):.0f} |")
    lines.append("| real test digits | " + " | ".join(f"{first.get('real_test_fid', float('nan')):.2f}"
                                                     for _ in steps) + " | |")
    lines.append("")
    lines.append(f"Classifier test accuracy: {first.get('classifier_accuracy', float('nan')):.3f}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "mnist_table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
