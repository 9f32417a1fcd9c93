"""2-D Dirac modes: Kac flow vs VP and Cond-OT on a 3x3 grid of near-Dirac modes (papers.md §2.6).

    python -m experiments.kac_dirac --config experiments/configs/kac_dirac.py --workdir results/kac_dirac

Data: the 9 points {-1, 0, 1}^2 with Gaussian noise of standard deviation `std` (`table.stds`: 1e-4 near-Dirac,
as in the reference 2-D experiment, and 1e-2). Paths (`table.paths`, settings in the config): the table uses
`kac` with the linear signal f(s) = 1 - s/T and the Kac prior at t = 0; `kac_reference` is the reference 2-D
script's variant, f ≡ 1 with the data-dependent prior x_T = K_T + a fresh data sample (`DataPriorKacPath`).
Each model draws `eval.num_samples` points with Euler at `eval.step_counts` and adaptive Dopri5.

Metrics per (std, path, solver): modes hit (of 9; a mode is hit when a sample lies within r1 of it), fraction
of samples within r1 and r2 of their nearest mode (`eval.radii`), W2 to fresh data (exact OT), and NFE.

Writes `kac_dirac.md`, `kac_dirac.csv`, `samples_std<std>.png` (paths x solvers) and `kac_velocity_field.png`
(the first Kac model's field at a few times, with the samples it transports).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common, evaluation, plots, registry, tables
from experiments.configs import default
from experiments.configs.kac_dirac import PATHS
from experiments.train import DATA_SHAPE, init_model, train, validate
from fm_jax import metrics, sampling
from fm_jax import paths as P
from fm_jax.data import toy

MODES = np.array([[i, j] for i in (-1.0, 0.0, 1.0) for j in (-1.0, 0.0, 1.0)], np.float32)
COLUMNS = ["std", "path", "solver", "nfe", "modes_hit", "frac_r1", "frac_r2", "w2", "train_seconds", "final_loss"]


class ConstantSignal(P.AbstractKacSignal):
    """f(s) ≡ 1: no signal schedule (the reference 2-D script); the source then depends on the data."""

    def f(self, s, T):
        return jnp.ones_like(jnp.asarray(s))


class DataPriorKacPath(P.AbstractFirstOrderPath):
    """z_t = x1 + K_{s}, s = T (1 - t), with the data-dependent source z_0 = K_T + x', x' a fresh data draw
    (the 3×3 grid with per-mode standard deviation `std`). Conditional samples and targets are `kac`'s."""

    kac: P.KacPath
    std: jax.Array

    def kac_time(self, t):
        return self.kac.kac_time(t)

    def sample_source(self, key, shape):
        k_kac, k_data = jax.random.split(key)
        return self.kac.sample_source(k_kac, shape) + toy.gaussian_grid(k_data, 1, self.std)[0].reshape(shape)

    def sample_conditional(self, key, x1, t):
        return self.kac.sample_conditional(key, x1, t)


def data_prior_kac_path(*, std: float, a: float = 9.0, c: float = 3.0, T: float = 1.0) -> DataPriorKacPath:
    """The registry's `kac_data_prior` factory."""
    return DataPriorKacPath(P.KacPath(a=a, c=c, T=T, signal=ConstantSignal()), jnp.asarray(std, jnp.float32))


def mode_metrics(samples: np.ndarray, radius: float) -> tuple[int, float]:
    """(number of modes with a sample within `radius`, fraction of samples within `radius` of a mode)."""
    samples = samples[np.all(np.isfinite(samples), axis=1)]
    d = np.linalg.norm(samples[:, None, :] - MODES[None, :, :], axis=-1)
    close = d < radius
    return int(np.sum(close.any(axis=0))), float(np.mean(close.any(axis=1))) if len(samples) else 0.0


def cell_config(config, label: str, std: float):
    """The run config of one (path label, std) cell."""
    c = default.get_config()
    name, kwargs = PATHS[label]
    if name == "kac_data_prior":
        kwargs = {**kwargs, "std": std}  # the prior draws fresh data of the same law
    c.path = default.spec(name, **kwargs)
    c.dataset = default.spec("grid", std=std)
    for block in ("model", "train", "log"):
        c[block] = config[block]
    c.eval.update({k: config.eval[k] for k in ("num_samples", "solver", "step_counts", "adaptive_solver")})
    c.seed = config.seed
    return c


def run(config, out: str) -> list[dict]:
    """Train every path at every std, evaluate every solver; write the table (and plots). Returns the rows."""
    for label in config.table.paths:
        if label not in PATHS:
            raise common.ConfigError(f"unknown kac_dirac path label {label!r}; known: {', '.join(PATHS)}")
        for std in config.table.stds:
            validate(cell_config(config, label, std))
    os.makedirs(out, exist_ok=True)
    r1, r2 = config.eval.radii
    rows, samples_by, trained = [], {}, {}
    for std in config.table.stds:
        reference = np.asarray(toy.gaussian_grid(jax.random.key(10_000 + config.seed), config.eval.num_samples, std))
        for label in config.table.paths:
            c = cell_config(config, label, std)
            path = common.build_path(c)
            apply, params = init_model(c, path, c.seed)
            state, seconds, curve = train(c, path, apply, params, None, progress=False)
            trained[(std, label)] = (path, apply, state.ema_params)

            def score(x):
                hit, frac1 = mode_metrics(x, r1)
                return {"modes_hit": hit, "frac_r1": frac1, "frac_r2": mode_metrics(x, r2)[1],
                        "w2": metrics.wasserstein2(x, reference)}

            got = evaluation.evaluate(jax.random.key(c.seed + 1), path, apply, state.ema_params, c.eval, DATA_SHAPE,
                                      score)
            for tag, m in got.items():
                rows.append({"std": std, "path": label, "solver": tag, **m, "train_seconds": seconds,
                             "final_loss": curve[-1]["loss"]})
                print(f"std={std:g} {label:>13s} {tag:>8s} nfe={m['nfe']:4d} modes={m['modes_hit']}/9 within "
                      f"{r1:g} / {r2:g}: {m['frac_r1']:.3f} / {m['frac_r2']:.3f} W2={m['w2']:.4f}", flush=True)
            samples_by.update({(std, label, tag): sample for tag, sample in _samples(c, path, apply, state).items()})
    preamble = (f"Modes hit (of 9: a sample within r1 = {r1:g}); fraction of samples within r1 (frac_r1) and "
                f"r2 = {r2:g} (frac_r2) of a mode; exact W2 to fresh data. Paths: {', '.join(config.table.paths)} "
                f"(`kac`: linear signal, Kac prior; `kac_reference`: f ≡ 1, data-dependent prior).\n\n")
    tables.write(rows, out, "kac_dirac", COLUMNS, preamble=preamble)
    if config.eval.plots:
        tags = [t for t, _, _ in evaluation.solver_runs(config.eval)]
        for std in config.table.stds:
            plots.panel_grid({(label, t): samples_by.get((std, label, t)) for label in config.table.paths
                              for t in tags}, list(config.table.paths), tags,
                             os.path.join(out, f"samples_std{std:g}.png"), lim=2.0, size=2.4, marks=MODES,
                             title=f"3x3 near-Dirac modes, std {std:g}")
        kac_labels = [label for label in config.table.paths if label.startswith("kac")]
        if kac_labels:
            path, apply, params = trained[(config.table.stds[0], kac_labels[0])]
            _plot_kac_field(path, apply, params, config.seed, os.path.join(out, "kac_velocity_field.png"))
    return rows


def _samples(c, path, apply, state) -> dict:
    # The sample clouds for the figure (the evaluator keeps only the scores).
    out = {}
    for tag, name, n in evaluation.solver_runs(c.eval):
        res = sampling.sample(jax.random.key(c.seed + 1), path, apply, state.ema_params, c.eval.num_samples,
                              DATA_SHAPE, solver=registry.get_solver(name), num_steps=n)
        out[tag] = np.asarray(res.samples)
    return out


def _plot_kac_field(path, apply, params, seed: int, filename: str, times=(0.0, 0.5, 0.8, 0.95)) -> None:
    """Quiver of the trained Kac model's field at a few t, over the states the Euler sampler visits then."""
    res = sampling.sample(jax.random.key(seed + 1), path, apply, params, 600, DATA_SHAPE,
                          solver=registry.get_solver("euler"), num_steps=100, save_trajectory=101)
    traj = np.asarray(res.trajectory)
    g = np.linspace(-3.0, 3.0, 21, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    panels = [{"grid": grid, "u": np.asarray(apply(params, jnp.asarray(grid), jnp.float32(t))),
               "points": traj[int(round(t * 100))], "lim": 3.2,
               "title": f"t = {t:g} (Kac clock s = {float(path.kac_time(t)):.2f})"} for t in times]
    panels.append({"points": traj[-1], "lim": 2.0, "title": "t = 1 (Euler 100)"})
    plots.field_panels(panels, filename)


def main(config, workdir: str) -> None:
    start = time.perf_counter()
    run(config, workdir)
    print(f"wrote {workdir}/kac_dirac.md ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    common.run(main, "experiments/configs/kac_dirac.py", "results/kac_dirac")
