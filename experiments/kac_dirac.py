"""2-D Dirac modes: Kac flow vs VP and Cond-OT on a 3x3 grid of near-Dirac modes (papers.md §2.6).

    python -m experiments.kac_dirac [--out results/kac_dirac] [--steps 3000] [--stds 1e-4,1e-2]

Data: the 9 points {-1, 0, 1}^2 with Gaussian noise of standard deviation `std` (1e-4: near-Dirac, as in the
reference 2-D experiment; 1e-2). Paths: `kac` (a = 9, c = 3, T = 1, linear signal: the Kac prior at t = 0),
`vp` and `cond_ot` (Gaussian sources), each with the same MLP (3 x 256, SiLU, Fourier time features), the same
optimiser (Adam 1e-3, clip 1, EMA 0.999), batch and number of steps. Each model draws `--samples` points with
Euler at 10, 20, 50 and 100 steps and with adaptive Dopri5 (rtol = atol = 1e-5).

Metrics per (std, path, solver): modes hit (of 9; a mode is hit when a sample lies within r1 of it), fraction
of samples within r1 and r2 of their nearest mode (`--radii`, default 0.05 and 0.2), W2 to fresh data (exact
OT), and NFE.

Writes `kac_dirac.md`, `kac_dirac.csv`, `kac_dirac.json`, `samples_std<std>.png` (paths x solvers) and
`kac_velocity_field.png` (the trained Kac model's field at a few times, with the samples it transports).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import registry
from fm_jax import losses, metrics, sampling, training
from fm_jax.models import MLP, as_apply

MODES = np.array([[i, j] for i in (-1.0, 0.0, 1.0) for j in (-1.0, 0.0, 1.0)], np.float32)
PATHS = ("kac", "vp", "cond_ot")
SOLVERS = {
    "euler10": (diffrax.Euler(), 10),
    "euler20": (diffrax.Euler(), 20),
    "euler50": (diffrax.Euler(), 50),
    "euler100": (diffrax.Euler(), 100),
    "dopri5": (diffrax.Dopri5(), None),
}
COLUMNS = ["std", "path", "solver", "nfe", "modes_hit", "frac_r1", "frac_r2", "w2", "train_seconds", "final_loss"]


def dirac_grid(key, n: int, std: float):
    """n draws of the 3x3 grid mixture with per-mode standard deviation `std`: (n, 2)."""
    k_mode, k_noise = jax.random.split(key)
    idx = jax.random.randint(k_mode, (n,), 0, len(MODES))
    return jnp.asarray(MODES)[idx] + std * jax.random.normal(k_noise, (n, 2))


def mode_metrics(samples: np.ndarray, radius: float) -> tuple[int, float]:
    """(number of modes with a sample within `radius`, fraction of samples within `radius` of a mode)."""
    samples = samples[np.all(np.isfinite(samples), axis=1)]
    d = np.linalg.norm(samples[:, None, :] - MODES[None, :, :], axis=-1)
    close = d < radius
    return int(np.sum(close.any(axis=0))), float(np.mean(close.any(axis=1))) if len(samples) else 0.0


def train(path, apply, params, std: float, steps: int, batch: int, seed: int, steps_per_call: int = 500):
    """Flow-matching training on the grid data (batches drawn in-graph); returns (EMA params, final loss, s)."""
    optimizer = training.make_optimizer(1e-3, clip_norm=1.0)
    loss_fn = functools.partial(losses.flow_matching_loss, apply=apply)
    loop = training.make_train_loop(
        loss_fn, optimizer, lambda k: dirac_grid(k, batch, std), steps_per_call=steps_per_call, ema_decay=0.999
    )
    state = training.init_train_state(jax.random.key(seed), params, optimizer)
    start = time.perf_counter()
    loss = float("nan")
    for _ in range(max(steps // steps_per_call, 1)):
        state, m = loop(state, path)
        loss = float(jnp.mean(m["loss"][-50:]))
    return state.ema_params, loss, time.perf_counter() - start


def run(
    out: str,
    steps: int = 3000,
    stds=(1e-4, 1e-2),
    num_samples: int = 2000,
    radii: tuple[float, float] = (0.05, 0.2),
    batch: int = 256,
    seed: int = 0,
    plots: bool = True,
) -> list[dict]:
    """Train every path at every std, evaluate every solver; write the table (and plots). Returns the rows."""
    os.makedirs(out, exist_ok=True)
    apply, _ = as_apply(MLP(2, 2, hidden=256, depth=3, rngs=nnx.Rngs(0)))
    rows, samples_by, trained = [], {}, {}
    for std in stds:
        reference = np.asarray(dirac_grid(jax.random.key(10_000 + seed), num_samples, std))
        for name in PATHS:
            path = registry.get_path(name)
            _, params = as_apply(MLP(2, 2, hidden=256, depth=3, rngs=nnx.Rngs(seed)))
            params, loss, seconds = train(path, apply, params, std, steps, batch, seed)
            trained[(std, name)] = (path, params)
            for solver_name, (solver, num_steps) in SOLVERS.items():
                res = sampling.sample(
                    jax.random.key(seed + 1), path, apply, params, num_samples, (2,), solver=solver, num_steps=num_steps
                )
                x = np.asarray(res.samples)
                hit, frac1 = mode_metrics(x, radii[0])
                frac2 = mode_metrics(x, radii[1])[1]
                row = {
                    "std": std,
                    "path": name,
                    "solver": solver_name,
                    "nfe": int(res.nfe),
                    "modes_hit": hit,
                    "frac_r1": frac1,
                    "frac_r2": frac2,
                    "w2": metrics.wasserstein2(x, reference),
                    "train_seconds": seconds,
                    "final_loss": loss,
                }
                rows.append(row)
                samples_by[(std, name, solver_name)] = x
                print(
                    f"std={std:g} {name:>8s} {solver_name:>8s} nfe={row['nfe']:4d} modes={hit}/9 "
                    f"within {radii[0]:g} / {radii[1]:g}: {frac1:.3f} / {frac2:.3f} W2={row['w2']:.4f}",
                    flush=True,
                )
    _write(rows, out, radii)
    if plots:
        for std in stds:
            _plot_samples(samples_by, std, os.path.join(out, f"samples_std{std:g}.png"))
        path, params = trained[(stds[0], "kac")]
        _plot_kac_field(
            path,
            apply,
            params,
            samples_by[(stds[0], "kac", "euler100")],
            seed,
            os.path.join(out, "kac_velocity_field.png"),
        )
    return rows


def _write(rows, out: str, radii) -> None:
    with open(os.path.join(out, "kac_dirac.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "kac_dirac.json"), "w") as f:
        json.dump({"radii": list(radii), "rows": rows}, f, indent=1)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    with open(os.path.join(out, "kac_dirac.md"), "w") as f:
        f.write(
            f"Modes hit (of 9: a sample within r1 = {radii[0]:g}); fraction of samples within r1 (frac_r1) and "
            f"r2 = {radii[1]:g} (frac_r2) of a mode; exact W2 to fresh data.\n\n"
        )
        f.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        for r in rows:
            f.write("| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |\n")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_samples(samples_by, std: float, filename: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(PATHS), len(SOLVERS), figsize=(2.4 * len(SOLVERS), 2.4 * len(PATHS)), squeeze=False)
    for i, name in enumerate(PATHS):
        for j, solver_name in enumerate(SOLVERS):
            ax = axes[i, j]
            x = samples_by[(std, name, solver_name)]
            ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5)
            ax.scatter(MODES[:, 0], MODES[:, 1], s=12, marker="x", c="red", linewidths=0.8)
            ax.set_xlim(-2, 2)
            ax.set_ylim(-2, 2)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(solver_name, fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f"3x3 near-Dirac modes, std {std:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)


def _plot_kac_field(path, apply, params, final, seed: int, filename: str, times=(0.0, 0.5, 0.8, 0.95)) -> None:
    """Quiver of the trained Kac model's field at a few t, over the states the Euler sampler visits then."""
    plt = _plt()
    res = sampling.sample(
        jax.random.key(seed + 1),
        path,
        apply,
        params,
        600,
        (2,),
        solver=diffrax.Euler(),
        num_steps=100,
        save_trajectory=101,
    )
    traj = np.asarray(res.trajectory)
    g = np.linspace(-3.0, 3.0, 21, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    fig, axes = plt.subplots(1, len(times) + 1, figsize=(3.0 * (len(times) + 1), 3.0))
    for ax, t in zip(axes, times):
        u = np.asarray(apply(params, jnp.asarray(grid), jnp.float32(t)))
        ax.quiver(grid[:, 0], grid[:, 1], u[:, 0], u[:, 1], np.linalg.norm(u, axis=1), cmap="viridis", width=0.004)
        pts = traj[int(round(t * 100))]
        ax.scatter(pts[:, 0], pts[:, 1], s=1, c="k", alpha=0.4)
        ax.set_title(f"t = {t:g} (Kac clock s = {float(path.kac_time(t)):.2f})", fontsize=9)
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
        ax.set_aspect("equal")
    axes[-1].scatter(final[:, 0], final[:, 1], s=0.5)
    axes[-1].set_title("t = 1 (Euler 100)", fontsize=9)
    axes[-1].set_xlim(-2, 2)
    axes[-1].set_ylim(-2, 2)
    axes[-1].set_aspect("equal")
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/kac_dirac")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--stds", default="1e-4,1e-2")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--radii", default="0.05,0.2", help="r1 (mode hits and fraction), r2 (fraction)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    stds = tuple(float(v) for v in args.stds.split(","))
    start = time.perf_counter()
    radii = tuple(float(v) for v in args.radii.split(","))
    run(args.out, args.steps, stds, args.samples, radii, seed=args.seed, plots=not args.no_plots)
    print(f"wrote {args.out}/kac_dirac.md ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
