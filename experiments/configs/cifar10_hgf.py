"""CIFAR-10 with the Oscillation Hamiltonian generative flow, following the paper's recipe as far as it is known.

Holderrieth, Xu, Jaakkola (NeurIPS 2024) report FID 2.12 (unconditional) with an EDM-style setup; their alpha,
sigma_v, preconditioning and sampler settings were not available (papers.md §3.6, §8). Here:
- path `hgf_osc` (alpha = 1, sigma_v = 1: source N(0, I) for data in [-1, 1]; in our time the oscillation flow is
  the trigonometric path x_t = sin(pi t/2) x1 + cos(pi t/2) z0, whatever alpha);
- the papers' 38 M-parameter U-Net and training protocol from `image_base.cifar10`, and its evaluation grid
  (Euler 20 / 50 / 100, dopri5, bits/dim, kinetic energy);
- EDM's deterministic sampler (`eval.edm_sampler`, `fm_jax.sampling.sample_edm`): 18 steps on the rho = 7 grid
  of noise levels sigma_i (sigma_min 0.002, sigma_max 80) mapped to our time through the path's signal-to-noise
  ratio, t_i = (2/pi) arctan(sigma_v / (alpha sigma_i)); Heun steps, the last one Euler: NFE 35, EDM's count
  (2N - 1). The row is tagged `edm_heun18`. EDM's network preconditioning (c_skip, c_out, c_in with sigma_data
  0.5) is not used: the U-Net predicts the velocity directly, as for every other path.
"""

import ml_collections

from experiments.configs.image_base import cifar10


def get_config() -> ml_collections.ConfigDict:
    c = cifar10("hgf_osc", alpha=1.0, sigma_v=1.0)
    c.eval.edm_sampler = ml_collections.ConfigDict(dict(num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0))
    return c
