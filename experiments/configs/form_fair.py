"""Settings of `experiments/form_fair.py`: ForM against first/second-order FM on a generator outside every model class.

    python -m experiments.form_fair --config experiments/configs/form_fair.py --config.seeds=3
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seeds = 3
    c.seed = 2026  # base PRNG seed; seed i uses fold_in(key(seed), i)
    c.datasets = "moons,spiral"  # initial-state families of `fm_jax.data.relativistic_sims.field_initial`
    c.settings = "with_v0,without_v0"  # with_v0: every method is given (x0, v0); without_v0: x0 only
    c.methods = "o1,o12,newton,form,form_vec,form_t"
    c.n_train = 500
    c.n_test = 1500
    c.substeps = 50  # generator: fine momentum steps per recorded step (samplers take 1)
    c.position_noise = 0.01  # observation noise on training positions (units of c T)
    c.velocity_noise = 0.01  # observation noise on training velocities (units of c)
    # One budget for every method: same iterations, optimiser, learning-rate schedule, width and depth.
    c.iters = 2000
    c.lr = 3e-3
    c.final_lr_fraction = 0.1
    c.hidden = 64
    c.depth = 2
    c.checkpoint_every = 1000  # training steps per compiled call, each followed by a checkpoint (relaunch resumes)
    return c
