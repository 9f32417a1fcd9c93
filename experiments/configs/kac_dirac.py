"""The Kac paper's 2-D experiment (`experiments.kac_dirac`): a 3×3 grid of near-Dirac modes, Kac vs VP and Cond-OT.

    python -m experiments.kac_dirac --config experiments/configs/kac_dirac.py --workdir results/kac_dirac

`table.paths` are labels of `PATHS` below. The table uses `kac` (a = 9, c = 3, T = 1, linear signal
f(s) = 1 - s/T: the Kac prior at t = 0, the CIFAR-10 script's setting). The reference 2-D script instead uses no
signal schedule (f ≡ 1) and the data-dependent prior x_T = K_T + a fresh data sample: that is `kac_reference`
(add it with `--config.table.paths='("kac", "kac_reference", "vp", "cond_ot")'`).
Same MLP (3 × 256), optimiser (Adam 1e-3 constant, clip 1, EMA 0.999), batch and steps for every path.
"""

import ml_collections

from experiments.configs.default import spec

PATHS = {
    "kac": ("kac", dict(a=9.0, c=3.0, T=1.0)),
    "kac_reference": ("kac_data_prior", dict(a=9.0, c=3.0, T=1.0)),  # f ≡ 1, x_T = K_T + fresh data
    "vp": ("vp", {}),
    "cond_ot": ("cond_ot", {}),
}


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(hidden=256, depth=3, time_features=64))
    c.train = ml_collections.ConfigDict(dict(
        steps=3000, batch_size=256, learning_rate=1e-3, warmup_steps=0, final_lr_fraction=1.0, weight_decay=0.0,
        clip_norm=1.0, ema_decay=0.999, steps_per_call=500, time_sampler=spec("uniform"), checkpoint_every=3000,
        keep_checkpoints=1, max_bad_steps=500))
    c.eval = ml_collections.ConfigDict(dict(
        num_samples=2000, solver="euler", step_counts=(10, 20, 50, 100), adaptive_solver="dopri5", plots=True,
        radii=(0.05, 0.2)))  # r1: mode hits and fraction within r1; r2: fraction within r2
    c.log = ml_collections.ConfigDict(dict(tensorboard=False, verbose=False))
    c.table = ml_collections.ConfigDict(dict(paths=("kac", "vp", "cond_ot"), stds=(1e-4, 1e-2)))
    return c
