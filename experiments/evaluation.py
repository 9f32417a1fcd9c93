"""The one evaluator: draw samples with every configured solver / step count and score them.

`config.eval.solver` with each of `config.eval.step_counts`, plus `config.eval.adaptive_solver` (adaptive steps)
when set, plus EDM's sampler when `config.eval.edm_sampler` = {num_steps, sigma_min, sigma_max, rho} is set
(`fm_jax.sampling.sample_edm`: Heun on the ρ-schedule mapped to the path's time, last step Euler, NFE 2N − 1);
each run is tagged `<solver><steps>` (e.g. `euler100`), `<solver>` for the adaptive one, `edm_heun<N>` for EDM.
The score is the experiment's own (2-D distances for the toys, FID for images). Samples are drawn in chunks of
`eval.batch_size` (where the block has one), the i-th chunk from `fold_in(key, i)` (the first from `key`).

Image protocols on top (`experiments.train_images`):
- kinetic energy (`kinetic_energy_per_dim`) of the Euler trajectories with the most steps:
  E ∫_0^1 |dx/dt|² dt / D from `fm_jax.metrics.kinetic_energy` (exact for Euler paths saved every step);
- bits/dim on test images (`bits_per_dim_of_images`): Hutchinson log-likelihood with one uniform dequantisation draw
  per image, mean and standard error over images (`fm_jax.image_metrics.bits_per_dim` states the change of
  variables).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import fm_jax as fj
from experiments import registry
from experiments.common import ConfigError
from fm_jax.data import images as image_data
from fm_jax.paths import AbstractFirstOrderPath, AbstractSignalToNoise, AbstractSourceDensity

EDM = "edm"


def solver_runs(e) -> list[tuple[str, str, int | None]]:
    """(tag, solver name, steps or None for adaptive) of the eval block `e` (name "edm" for EDM's sampler)."""
    runs = [(f"{e.solver}{n}", e.solver, int(n)) for n in e.step_counts]
    if e.get("adaptive_solver"):
        runs.append((e.adaptive_solver, e.adaptive_solver, None))
    if e.get("edm_sampler"):
        runs.append((f"edm_heun{e.edm_sampler.num_steps}", EDM, int(e.edm_sampler.num_steps)))
    return runs


def validate(e) -> None:
    """Every solver name and step count of `e`, checked before training (one-line `ConfigError`)."""
    for _, name, n in solver_runs(e):
        if name != EDM:
            try:
                registry.get_solver(name)
            except ValueError as err:
                raise ConfigError(f"eval: {err}") from None
        if n is not None and n < 1:
            raise ConfigError(f"eval.step_counts must be positive integers, got {tuple(e.step_counts)}")
    if e.num_samples < 1:
        raise ConfigError(f"eval.num_samples must be >= 1, got {e.num_samples}")
    if e.get("batch_size") is not None and e.batch_size < 1:
        raise ConfigError(f"eval.batch_size must be >= 1, got {e.batch_size}")
    if e.get("edm_sampler"):
        s = e.edm_sampler
        if not 0 < s.sigma_min < s.sigma_max or s.rho <= 0:
            raise ConfigError(f"eval.edm_sampler needs 0 < sigma_min < sigma_max and rho > 0, got sigma_min="
                              f"{s.sigma_min}, sigma_max={s.sigma_max}, rho={s.rho}")
    if e.get("nll_samples"):
        try:
            solver = registry.get_solver(e.nll_solver)
        except ValueError as err:
            raise ConfigError(f"eval.nll_solver: {err}") from None
        if e.nll_probes < 1 or e.nll_tolerance <= 0 or not isinstance(solver, diffrax.AbstractAdaptiveSolver):
            raise ConfigError(f"eval: bits/dim needs nll_probes >= 1, nll_tolerance > 0 and an adaptive nll_solver "
                              f"(tsit5, dopri5), got {e.nll_probes}, {e.nll_tolerance}, {e.nll_solver!r}")


def _draw(key, path, apply, params, e, data_shape, name: str, steps: int | None, trajectory: bool,
          keep_trajectory: bool = False, sharding=None):
    """(samples (num_samples, *d), nfe, kinetic energy per dimension or None, (trajectories (steps + 1,
    num_samples, *d), their times) or None), drawn in chunks. trajectory: save each chunk's trajectory for the
    kinetic energy; keep_trajectory: also return them (only where they fit in memory: the toy sizes, not images).
    sharding: of each chunk's source draws (`fj.sample`), to solve data-parallel."""
    n = e.num_samples
    b = min(e.get("batch_size") or n, n)
    out, nfe, ke, trajs, ts = [], None, [], [], None
    for i, start in enumerate(range(0, n, b)):
        k = key if i == 0 else jax.random.fold_in(key, i)
        m = min(b, n - start)  # every chunk draws b (one compilation); the last keeps m
        if name == EDM:
            s = e.edm_sampler
            res = fj.sample_edm(k, path, apply, params, b, data_shape, num_steps=steps, sigma_min=s.sigma_min,
                                sigma_max=s.sigma_max, rho=s.rho, sharding=sharding)
        else:
            res = fj.sample(k, path, apply, params, b, data_shape, solver=registry.get_solver(name), num_steps=steps,
                            save_trajectory=steps + 1 if trajectory else None, sharding=sharding)
        if trajectory:
            traj = jax.vmap(path.readout)(res.trajectory)[:, :m]
            ke.append(float(fj.metrics.kinetic_energy(traj, res.ts)) * m)
            if keep_trajectory:
                trajs.append(np.asarray(traj))
                ts = np.asarray(res.ts)
        out.append(np.asarray(res.samples)[:m])
        nfe = None if res.nfe is None else max(int(res.nfe), nfe or 0)
    if not trajectory:
        return np.concatenate(out), nfe, None, None
    kept = (np.concatenate(trajs, axis=1), ts) if keep_trajectory else None
    return np.concatenate(out), nfe, sum(ke) / n / math.prod(data_shape), kept


def evaluate(key, path, apply, params, e, data_shape: tuple[int, ...], score: Callable[[np.ndarray], dict], *,
             kinetic_energy: bool = False, keep_samples: int = 0, keep_trajectory: bool = False,
             sharding=None) -> dict[str, dict]:
    """{tag: {"nfe", "nonfinite", **score(samples)}} for every solver run of the eval block `e`.

    kinetic_energy: also save the trajectories of the run of `e.solver` with the most steps and add its
    `kinetic_energy_per_dim` (E ∫ |dx/dt|² dt / D). keep_samples: keep the first this many samples of that run
    under "_samples" (for a sample grid). keep_trajectory: keep that run's trajectories (steps + 1, num_samples, *d)
    and their times under "_trajectory" and "_ts" (one solve gives the scores and the trajectory metrics).
    sharding: of the source draws of each chunk of `e.batch_size` samples (`fj.sample`): solves run
    data-parallel over its devices (the same samples up to float round-off).
    """
    out = {}
    ke_tag = f"{e.solver}{max(e.step_counts)}" if e.step_counts else None
    for tag, name, n in solver_runs(e):
        save = (kinetic_energy or keep_trajectory) and tag == ke_tag
        x, nfe, ke, traj = _draw(key, path, apply, params, e, data_shape, name, n, save,
                                 keep_trajectory and tag == ke_tag, sharding)
        finite = np.isfinite(x.reshape(len(x), -1)).all(-1)
        out[tag] = {"nfe": nfe, "nonfinite": int(np.sum(~finite)), **score(x)}
        if ke is not None and kinetic_energy:
            out[tag]["kinetic_energy_per_dim"] = ke
        if keep_samples and tag == ke_tag:
            out[tag]["_samples"] = x[:keep_samples]
        if traj is not None:
            out[tag]["_trajectory"], out[tag]["_ts"] = traj
    return out


def has_likelihood(path) -> bool:
    """Whether bits/dim apply: a first-order path with a source density (not Kac's law, not phase space)."""
    return isinstance(path, AbstractFirstOrderPath) and isinstance(path, AbstractSourceDensity)


def can_sample_edm(path) -> bool:
    """Whether EDM's sampler applies: an interpolant path with a signal-to-noise ratio."""
    return isinstance(path, AbstractSignalToNoise)


def bits_per_dim_of_images(key, path, apply, params, e, images: np.ndarray, levels: int) -> dict:
    """Bits/dim of test images under the model: {"bits_per_dim", "bits_per_dim_se", "nll_nfe", "nll_images"}.

    images: uint8 grey levels (n, H, W, C), the first `e.nll_samples` of the test split. Each image is dequantised
    once, x = 2 (k + u) / L − 1 with u ~ U[0, 1)^D, and log p(x) is estimated with `Hutchinson(e.nll_probes)` and
    `e.nll_solver` at tolerance `e.nll_tolerance`; the per-image values are averaged, their standard error is
    std / sqrt(n) (it covers the images, the dequantisation draw and the Hutchinson probes, all independent).
    """
    n = len(images)
    b = min(e.get("batch_size") or n, n)
    solver = registry.get_solver(e.nll_solver)
    bpd, nfe = [], 0
    for i, start in enumerate(range(0, n, b)):
        k_noise, k_probe = jax.random.split(jax.random.fold_in(key, i))
        chunk = images[start : start + b]
        m = len(chunk)
        if m < b:  # pad to one batch shape (one compilation); padded rows dropped
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], b - m, axis=0)])
        u = np.asarray(jax.random.uniform(k_noise, chunk.shape, jnp.float32))
        x = jnp.asarray(image_data.dequantize(chunk, u, levels))
        got, n_eval = fj.image_metrics.model_bits_per_dim(k_probe, path, apply, params, x, levels=levels,
                                                          num_probes=e.nll_probes, solver=solver,
                                                          rtol=e.nll_tolerance, atol=e.nll_tolerance)
        bpd.append(np.asarray(got, np.float64)[:m])
        nfe = max(nfe, int(n_eval)) if n_eval is not None else nfe
    v = np.concatenate(bpd)
    se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"bits_per_dim": float(np.mean(v)), "bits_per_dim_se": se, "nll_nfe": nfe, "nll_images": int(len(v))}
