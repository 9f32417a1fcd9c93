"""The single list of every path the contract tests run over.

Adding a path = one `PathCase` here. `make` builds the path with default hyper-parameters; `make_other` builds
the same class with different hyper-parameter *values* (the no-retracing test compiles once for both).
`t0_mean_atol` is extra tolerance on the t = 0 law where a schedule only approaches its source (VP's alpha(0)).
`t1_atol` is how far z_1 may sit from the data (VP's sigma(1) ~ 1e-3, VE's sigma_min).
`pathwise_target`: the target equals d/dt of z_t drawn with a fixed key (true for interpolants and flow-map
samplers); paths whose sampler is not their flow map set False and test the continuity equation instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from fm_jax import paths as P
from fm_jax.hamiltonian import HarmonicForce


@dataclasses.dataclass(frozen=True)
class PathCase:
    name: str
    make: Callable[[], P.AbstractPath]
    make_other: Callable[[], P.AbstractPath]
    t0_mean_atol: float = 0.0
    t1_atol: float = 1e-5
    pathwise_target: bool = True


ALL_PATHS: list[PathCase] = [
    PathCase("cond_ot", lambda: P.AffinePath(P.CondOT()), lambda: P.AffinePath(P.CondOT(0.1)), t1_atol=1e-5),
    PathCase("vp", lambda: P.AffinePath(P.VP()), lambda: P.AffinePath(P.VP(0.2, 15.0)), 0.02, 5e-3),
    PathCase("ve", lambda: P.AffinePath(P.VE(0.01, 5.0)), lambda: P.AffinePath(P.VE(0.02, 3.0)), 1.0, 0.1),
    PathCase("cosine", lambda: P.AffinePath(P.Cosine()), lambda: P.AffinePath(P.Cosine())),
    PathCase("poly2", lambda: P.AffinePath(P.Polynomial(2.0)), lambda: P.AffinePath(P.Polynomial(3.0))),
    PathCase("form", lambda: P.ForcePath(), lambda: P.ForcePath(c=9.0, m=2.0, sigma_x=0.5, sigma_p=0.7)),
    PathCase("fm12", lambda: P.NewtonianSecondOrderPath(), lambda: P.NewtonianSecondOrderPath(0.5, 0.7)),
    PathCase("kac", lambda: P.KacPath(), lambda: P.KacPath(a=25.0, c=2.0), pathwise_target=False),
    PathCase("hgf_osc", lambda: P.OscillationHGFPath(1.0, 1.0), lambda: P.OscillationHGFPath(2.0, 1.5)),
    PathCase("hgf_zero_ve", lambda: P.ZeroForceHGFPath(0.01, 5.0), lambda: P.ZeroForceHGFPath(0.02, 3.0), 1.0, 0.1),
    PathCase("hgf_zero_ot", lambda: P.CoupledZeroForceHGFPath(), lambda: P.CoupledZeroForceHGFPath(2.0)),
    PathCase(
        "hgf_force",
        lambda: P.ForceFieldHGFPath(HarmonicForce(1.0), 0.5 * math.pi, 1.0, 1.0, n_steps=16),
        lambda: P.ForceFieldHGFPath(HarmonicForce(2.0), 0.25 * math.pi, 1.0, 0.5, n_steps=16),
        t0_mean_atol=0.02,  # Verlet's O(h^2) error at t = 0 (h = T/16) against the declared source law
    ),
    PathCase(
        "hgf_reflect",
        lambda: P.ReflectingBoxHGFPath(5.0, 1.0, 20.0),
        lambda: P.ReflectingBoxHGFPath(6.0, 2.0, 12.0),
    ),
    # KO path for lambda(s) = (q + s^2)/(1 + s^2), i.e. gamma = q: closed-form angle theta_t = psi_t / sqrt(q).
    PathCase(
        "ko",
        lambda: P.ko_path(lambda s: (0.3 + s**2) / (1 + s**2)),
        lambda: P.ko_path(lambda s: (0.6 + s**2) / (1 + s**2), data_scale=1.5),
    ),
]
