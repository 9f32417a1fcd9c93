"""The one evaluator: draw samples with every configured solver / step count and score them.

`config.eval.solver` with each of `config.eval.step_counts`, plus `config.eval.adaptive_solver` (adaptive steps)
when set; each run is tagged `<solver><steps>` (e.g. `euler100`) or `<solver>` for the adaptive one. The score
is the experiment's own (2-D distances for the toys, MNIST-FID for images).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import fm_jax as fj
from experiments import registry
from experiments.common import ConfigError


def solver_runs(e) -> list[tuple[str, str, int | None]]:
    """(tag, solver name, steps or None for adaptive) of the eval block `e`."""
    runs = [(f"{e.solver}{n}", e.solver, int(n)) for n in e.step_counts]
    if e.get("adaptive_solver"):
        runs.append((e.adaptive_solver, e.adaptive_solver, None))
    return runs


def validate(e) -> None:
    """Every solver name and step count of `e`, checked before training (one-line `ConfigError`)."""
    for _, name, n in solver_runs(e):
        try:
            registry.get_solver(name)
        except ValueError as err:
            raise ConfigError(f"eval: {err}") from None
        if n is not None and n < 1:
            raise ConfigError(f"eval.step_counts must be positive integers, got {tuple(e.step_counts)}")
    if e.num_samples < 1:
        raise ConfigError(f"eval.num_samples must be >= 1, got {e.num_samples}")


def evaluate(key, path, apply, params, e, data_shape: tuple[int, ...],
             score: Callable[[np.ndarray], dict]) -> dict[str, dict]:
    """{tag: {"nfe", "nonfinite", **score(samples)}} for every solver run of the eval block `e`."""
    out = {}
    for tag, name, n in solver_runs(e):
        res = fj.sample(key, path, apply, params, e.num_samples, data_shape, solver=registry.get_solver(name),
                        num_steps=n)
        x = np.asarray(res.samples)
        finite = np.isfinite(x.reshape(len(x), -1)).all(-1)
        out[tag] = {"nfe": int(res.nfe), "nonfinite": int(np.sum(~finite)), **score(x)}
    return out
