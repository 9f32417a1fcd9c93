"""CIFAR-10 with the Oscillation Hamiltonian generative flow, following the paper's recipe as far as it is known.

Holderrieth, Xu, Jaakkola (NeurIPS 2024) report FID 2.12 (unconditional) with an EDM-style setup; their alpha,
sigma_v, preconditioning and sampler settings were not available (papers.md §3.6, §8). Here:
- path `hgf_osc` (alpha = 1, sigma_v = 1: source N(0, I) for data in [-1, 1]; in our time the oscillation flow is
  the trigonometric path x_t = sin(pi t/2) x1 + cos(pi t/2) z0, whatever alpha);
- the papers' 38 M-parameter U-Net and training protocol from `image_base.cifar10`;
- a deterministic Heun sampler with 18 steps. EDM counts NFE 35 because its last step is an Euler step;
  Diffrax's Heun spends two evaluations on every step, so the project's sampler reports NFE 36 for the same grid.
  EDM also spaces its steps by the rho = 7 schedule in sigma (sigma_min 0.002, sigma_max 80, sigma_data 0.5); the
  project's sampler uses a uniform grid in t (uniform in the oscillation clock tau): the EDM grid is not
  implemented.
"""

import ml_collections

from experiments.configs.image_base import cifar10


def get_config() -> ml_collections.ConfigDict:
    c = cifar10("hgf_osc", alpha=1.0, sigma_v=1.0)
    c.eval.solver = "heun"
    c.eval.step_counts = (18,)  # EDM Heun grid: NFE 35 in EDM's count, 36 with Diffrax Heun
    return c
