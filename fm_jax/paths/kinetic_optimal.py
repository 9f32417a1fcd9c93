"""Kinetic-optimal (KO) Gaussian paths (Shaul et al. 2023): an `AffinePath` with the KO schedule.

A KO path is `AffinePath(ko_schedule(lam))`; the maths (data separation function lambda, the closed form of
Theorem 3.1, kinetic energies) lives in `fm_jax.kinetic`. Same clock as the paper: noise at t = 0, data at t = 1.
"""

from __future__ import annotations

from collections.abc import Callable

from .._typing import Array
from ..kinetic import KineticOptimal, ko_schedule
from .affine import AffinePath


def ko_path(
    lam: Callable[[Array], Array], *, gamma_min: float = 1e-6, num_grid: int = 4097, data_scale: float = 1.0
) -> AffinePath:
    """The KO path `AffinePath(ko_schedule(lam, ...))` for a data separation function `lam` (see `ko_schedule`).

    Example:
        >>> path = ko_path(lambda s: (0.3 + s**2) / (1 + s**2))   # gamma = 0.3: closed form theta_t
    """
    return AffinePath(ko_schedule(lam, gamma_min=gamma_min, num_grid=num_grid, data_scale=data_scale))


__all__ = ["KineticOptimal", "ko_path"]
