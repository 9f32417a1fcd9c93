"""The one place where names become objects (paths, datasets, solvers, time samplers).

The library takes objects; configs name things with strings; this module maps one to the other, as the Flax
examples map `config.model` to a class. Each entry is a class or factory taking keyword arguments; the values
come from the config (`get_path(config.path.name, **config.path.kwargs)`), never from here: a factory below only
says how a config's keyword arguments become objects (e.g. `schedule` fields into an `AffinePath`).
A new path needs no entry here: any path class exported from `fm_jax.paths` is found by its class name
(`config.path.name = "ForcePath"`); `PATHS` adds short names and factories that build nested objects
(docs/adding_a_path.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import diffrax

from fm_jax import losses
from fm_jax import paths as P
from fm_jax.data import toy
from fm_jax.hamiltonian import HarmonicForce


def _affine(schedule: type[P.AbstractSchedule]) -> Callable[..., P.AffinePath]:
    def make(**schedule_kwargs) -> P.AffinePath:
        return P.AffinePath(schedule(**schedule_kwargs))

    make.__signature__ = inspect.signature(schedule)
    return make


def _harmonic_hgf(*, alpha: float, **kwargs) -> P.ForceFieldHGFPath:
    return P.ForceFieldHGFPath(HarmonicForce(alpha), **kwargs)


def _ko_toy(**kwargs) -> P.AffinePath:
    # Kinetic-optimal path fitted to a 2-D toy dataset (cached per process, a few seconds).
    from experiments.ko_lambda import toy_ko_path

    return toy_ko_path(**kwargs)


def _ko_images(**kwargs) -> P.AffinePath:
    # KO path fitted to an image dataset's train split (lambda_hat cached on disk).
    from experiments.ko_lambda import image_ko_path

    return image_ko_path(**kwargs)


def _kac_data_prior(**kwargs) -> P.AbstractPath:
    # The Kac paper's reference 2-D setting: f ≡ 1 and the data-dependent prior (defined with its experiment).
    from experiments.kac_dirac import data_prior_kac_path

    return data_prior_kac_path(**kwargs)


PATHS: dict[str, Callable[..., P.AbstractPath]] = {
    "cond_ot": _affine(P.CondOT),
    "vp": _affine(P.VP),
    "ve": _affine(P.VE),
    "cosine": _affine(P.Cosine),
    "poly": _affine(P.Polynomial),
    "form": P.ForcePath,
    "fm12": P.NewtonianSecondOrderPath,
    "kac": P.KacPath,
    # Hamiltonian generative flows: in our time only sigma_v / alpha (the source scale) distinguishes alphas.
    "hgf_osc": P.OscillationHGFPath,
    "hgf_zero_ve": P.ZeroForceHGFPath,
    "hgf_zero_ot": P.CoupledZeroForceHGFPath,
    "hgf_force_harmonic": _harmonic_hgf,
    "hgf_reflect": P.ReflectingBoxHGFPath,
    "kac_data_prior": _kac_data_prior,
    "ko": _ko_toy,
    "ko_images": _ko_images,
}

DATASETS: dict[str, Callable] = {
    "moons": toy.half_moons,
    "8gaussians": toy.eight_gaussians,
    "checkerboard": toy.checkerboard,
    "spirals": toy.two_spirals,
    "circles": toy.circles,
    "grid": toy.gaussian_grid,  # takes `std`, `spacing`, `size` (the Kac paper's near-Dirac modes: std = 1e-2)
}

SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
}

TIME_SAMPLERS: dict[str, Callable[..., losses.AbstractTimeSampler]] = {
    "uniform": losses.UniformTime,
    "logit_normal": losses.LogitNormalTime,
}


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None


def _build(table: dict, kind: str, name: str, kwargs: Mapping[str, Any]):
    factory = _lookup(table, kind, name)
    kwargs = dict(kwargs)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        try:
            takes = ", ".join(p for p in inspect.signature(factory).parameters if p not in ("self", "kwargs"))
        except (TypeError, ValueError):
            takes = "?"
        raise ValueError(f"{kind} {name!r} does not accept keyword arguments {sorted(kwargs)} ({err}); "
                         f"it takes: {takes or 'none'}") from None
    return factory(**kwargs)


def _exported_paths() -> dict[str, type]:
    # Concrete path classes exported from fm_jax.paths, by class name.
    found = {}
    for attr in dir(P):
        obj = getattr(P, attr)
        if isinstance(obj, type) and issubclass(obj, P.AbstractPath) and not inspect.isabstract(obj):
            found[attr] = obj
    return found


def get_path(name: str, **kwargs) -> P.AbstractPath:
    """Build the path `name` (a `PATHS` entry, or a path class exported from `fm_jax.paths`) with `kwargs`
    (ValueError naming the known paths or arguments otherwise)."""
    return _build({**_exported_paths(), **PATHS}, "path", name, kwargs)


def get_dataset(name: str, **kwargs) -> Callable:
    """The toy generator `name(key, n, **kwargs) -> (n, 2)`."""
    fn = _lookup(DATASETS, "dataset", name)
    if not kwargs:
        return fn
    try:
        inspect.signature(fn).bind(None, 1, **kwargs)
    except TypeError as err:
        raise ValueError(f"dataset {name!r} does not accept keyword arguments {sorted(kwargs)} ({err})") from None
    return lambda key, n: fn(key, n, **kwargs)


def get_solver(name: str) -> diffrax.AbstractSolver:
    """A Diffrax solver by name."""
    return _lookup(SOLVERS, "solver", name)()


def get_time_sampler(name: str, **kwargs) -> losses.AbstractTimeSampler:
    """A time sampler for the loss by name (e.g. `uniform` with `stratified=True`)."""
    return _build(TIME_SAMPLERS, "time sampler", name, kwargs)
