"""The ForM paper's tables (`experiments.form_paper`): seeds, training iterations per method (the paper's 4000),
variants ("as_published" and/or "corrected"), datasets and methods, and checkpoint_every (training steps per
compiled call, each followed by a checkpoint under `<workdir>/runs/`: a relaunch resumes)."""

import ml_collections

from experiments.form_paper import METHODS
from fm_jax.data import relativistic_sims as sims


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(seeds=5, iters=4000, variants=("as_published", "corrected"),
                                          datasets=tuple(sims.DATASETS), methods=tuple(METHODS), checkpoint_every=1000))
