"""CIFAR-10, Table 1 protocol of Shaul et al. 2023 (KO paths): FM Cond-OT vs FM-KO with the same U-Net and budget.

Table 1 reports, per path, NLL (bits/dim), kinetic energy, FID with 20 / 50 / 100 Euler steps and with adaptive
dopri5, and dopri5's NFE; KE, FID and NFE are averaged over the last 3 checkpoints. Paper values (CIFAR-10):
Cond-OT 2.97 / 1.09 / 9.9 / 6.8 / 6.8 / 6.9 / 146; KO 2.97 / 1.08 / 9.1 / 6.2 / 6.2 / 6.1 / 147.

`get_config()` is the KO run (`path = "ko_cifar10"`: lambda_hat on the whole train split, exact posterior, cached
under results/ko_cache; `experiments.ko_lambda.image_ko_path`); `get_config("cond_ot")` is its Cond-OT twin.
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


def get_config(path: str = "ko_cifar10") -> ml_collections.ConfigDict:
    c = cifar10(path)
    c.compare_paths = ("cond_ot", "ko_cifar10")  # the two rows of Table 1 reproduced here
    c.ko = ml_collections.ConfigDict(
        dict(num_noise=1000, gamma_min=0.01, s_min=1e-2, s_max=1e3)  # Sec. 6.1: n = 50k, k from 0.3k to 10k
    )
    c.eval.update(
        dict(
            euler_steps=(20, 50, 100),  # FID-20 / FID-50 / FID-100
            adaptive_solver="dopri5",  # FID-adapt and NFE-adapt
            adaptive_rtol=1e-5,
            adaptive_atol=1e-5,
            fid_samples=50_000,
            fid_reference="train",
            nll=True,  # bits/dim by the instantaneous change of variables (dopri5, exact divergence)
            nll_samples=10_000,
            kinetic_energy=True,  # (1/d) E int ||u||^2 dt along dopri5 trajectories, Eq. 18's estimate
            average_last_checkpoints=3,
        )
    )
    c.paper = ml_collections.ConfigDict(PAPER_TABLE1.get("ko" if path.startswith("ko") else "cond_ot"))
    return c
