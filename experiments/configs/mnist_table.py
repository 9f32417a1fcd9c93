"""The MNIST-5k table (`experiments.mnist_table` = `experiments.image_table`): path × MNIST-FID by training step.

    python -m experiments.mnist_table --config experiments/configs/mnist_table.py --workdir results/images \
        [--config.table.paths='("cond_ot", "vp")' --config.train.steps=1000 --config.eval.at_steps='(500, 1000)']

Every row is `configs/mnist_<label>.py`'s path with this file's dataset, model, train, eval, log and seed blocks
(the CPU-sized U-Net of `image_base.mnist`), so all rows share one budget. `table.collect`: only merge the
`mnist_table.csv` of these directories into `--workdir`.
"""

import ml_collections

from experiments.configs.image_base import mnist


def get_config() -> ml_collections.ConfigDict:
    c = mnist("cond_ot")
    del c["path"]  # per row from configs/mnist_<label>.py
    c.table = ml_collections.ConfigDict(dict(dataset="mnist", paths=("cond_ot", "vp", "ko", "kac", "hgf", "form"),
                                             collect=("",)))
    return c
