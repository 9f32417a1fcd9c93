"""CIFAR-10, Table 1 protocol of Shaul et al. 2023 (KO paths): FM Cond-OT vs FM-KO with the same U-Net and budget.

Table 1 reports, per path, NLL (bits/dim), kinetic energy, FID with 20 / 50 / 100 Euler steps and with adaptive
dopri5, and dopri5's NFE; KE, FID and NFE are averaged over the last 3 checkpoints. Paper values (CIFAR-10,
`PAPER_TABLE1`): Cond-OT 2.97 / 1.09 / 9.9 / 6.8 / 6.8 / 6.9 / 146; KO 2.97 / 1.08 / 9.1 / 6.2 / 6.2 / 6.1 / 147.
`get_config()` is the KO run (path `ko_images`: lambda_hat on the whole train split with 1,000 noise draws, exact
posterior, gamma floored at 0.01, cached under results/ko_cache); `get_config("cond_ot")` is its Cond-OT twin.
The evaluation block is `image_base.cifar10`'s, which is this protocol: Inception FID of 50k samples at 20 / 50 /
100 Euler steps and dopri5 with its NFE, bits/dim of the 10k test images (Hutchinson), kinetic energy per
dimension of the 100-step Euler trajectories. Not implemented: averaging over the last 3 checkpoints (each
evaluated step count is its own row).
Needs `cifar10` prepared as array_record (see `fm_jax.data.images`), and a GPU/TPU for the 400k steps.
"""

import ml_collections

from experiments.configs.image_base import cifar10

PAPER_TABLE1 = {
    "cond_ot": dict(nll=2.97, ke=1.09, fid_euler20=9.9, fid_euler50=6.8, fid_euler100=6.8, fid_adaptive=6.9,
                    nfe_adaptive=146),
    "ko": dict(nll=2.97, ke=1.08, fid_euler20=9.1, fid_euler50=6.2, fid_euler100=6.2, fid_adaptive=6.1,
               nfe_adaptive=147),
}


def get_config(path: str = "ko") -> ml_collections.ConfigDict:
    if path == "ko":
        c = cifar10("ko_images", dataset="cifar10", num_noise=1000, gamma_min=0.01)
    elif path == "cond_ot":
        c = cifar10("cond_ot")
    else:
        raise ValueError(f"unknown CIFAR-10 KO-table run {path!r}; known: ko, cond_ot")
    c.eval.step_counts = (20, 50, 100)  # FID-20 / FID-50 / FID-100 (as image_base.cifar10)
    c.eval.adaptive_solver = "dopri5"  # FID-adapt and NFE-adapt
    return c
