"""Hamiltonian score matching on a 2-D Gaussian mixture (`experiments.hsm_gmm`); `hsm_gmm.py:quick` is a
smoke-test budget (seconds).

    python -m experiments.hsm_gmm --config experiments/configs/hsm_gmm.py --workdir results/hsm_gmm

Fields: steps, batch, lr, hidden, depth (force / velocity networks), inner_steps and velocity_lr (the velocity
predictor's inner updates), hsm_T and hsm_steps (horizon and Verlet steps of the HSM objective), dsm_sigma,
hsd_T, hsd_points, hsd_velocities (part 2), snr_sigmas, snr_samples, snr_predictor_steps, warmup_steps (part 3);
checkpoint_every (a multiple of 100: steps between the checkpoints each training run writes under
`<workdir>/runs/`; a relaunch resumes, a finished run is restored instead of retrained).
"""

import ml_collections


def get_config(budget: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        steps=2000, batch=512, inner_steps=4, velocity_lr=3e-3, lr=2e-3, hidden=64, depth=2, hsm_T=0.5,
        hsm_steps=4, dsm_sigma=0.1, hsd_T=(0.025, 0.05, 0.1, 0.2, 0.4), hsd_points=400, hsd_velocities=256,
        snr_sigmas=(0.01, 0.03, 0.1, 0.3, 1.0), snr_samples=4096, snr_predictor_steps=500, warmup_steps=0,
        checkpoint_every=500))
    if budget == "quick":
        c.update(dict(steps=100, hsd_points=64, hsd_velocities=64, hsd_T=(0.1, 0.4), snr_sigmas=(0.03, 0.3),
                      snr_samples=256, snr_predictor_steps=100))
    elif budget is not None:
        raise ValueError(f"unknown hsm_gmm budget {budget!r}; known: quick")
    return c
