"""The toy table (the main job, `make run`): every path of `toy_paths.TOY_TABLE_PATHS` × three 2-D datasets, with
the model, training budget and evaluation of `default.py`.

    python -m experiments.toy_table --config experiments/configs/toy_table.py --workdir results \
        [--config.train.steps=200 --config.table.paths='("cond_ot", "vp")' --config.table.datasets='("moons",)']
"""

import ml_collections

from experiments.configs import default
from experiments.configs.toy_paths import TOY_TABLE_PATHS


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    del c["path"], c["dataset"]  # set per row from table.paths / table.datasets
    c.eval.plots = False
    c.log.tensorboard = False
    c.table = ml_collections.ConfigDict(dict(paths=TOY_TABLE_PATHS, datasets=("moons", "8gaussians", "checkerboard")))
    return c
