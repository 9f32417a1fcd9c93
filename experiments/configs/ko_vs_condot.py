"""KO vs Cond-OT on the checkerboard at few Euler steps (`experiments.ko_vs_condot`; Shaul et al. 2023, Fig. 2).

    python -m experiments.ko_vs_condot --config experiments/configs/ko_vs_condot.py --workdir results/ko_vs_condot

The toy model, optimiser and evaluation of `default.py`; Euler at 2, 6, 10, 16 steps and dopri5; `table.seeds`
seeds of each path label (`toy_paths.PATH_SETTINGS`: `ko` is fitted on a checkerboard subsample).
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    del c["path"], c["dataset"]  # per row: table.paths on the checkerboard
    c.train.steps = 2000
    c.eval.step_counts = (2, 6, 10, 16)
    c.log.tensorboard = False
    c.table = ml_collections.ConfigDict(dict(paths=("cond_ot", "ko"), datasets=("checkerboard",), seeds=1))
    return c
