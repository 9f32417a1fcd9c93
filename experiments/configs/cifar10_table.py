"""The CIFAR-10 table (`experiments.image_table`): every paper's path side by side with one U-Net and budget.

    python -m experiments.image_table --config experiments/configs/cifar10_table.py --workdir results/cifar10

Every row is `configs/cifar10_<label>.py`'s path (and its `eval.edm_sampler`, if it sets one) with this file's
dataset, model, train, eval, log and seed blocks (the papers' 38 M-parameter U-Net, 400k steps, the KO Table-1
evaluation of `image_base.cifar10`). `table.path_kwargs` = {label: {keyword: value}} overrides a row's path
keywords (e.g. the KO fit's `data_dir` and `cache_dir`); `table.collect`: only merge the `cifar10_table.csv` of
these directories into `--workdir`.
"""

import ml_collections

from experiments.configs.image_base import cifar10


def get_config() -> ml_collections.ConfigDict:
    c = cifar10("cond_ot")
    del c["path"]  # per row from configs/cifar10_<label>.py
    c.table = ml_collections.ConfigDict(dict(dataset="cifar10", paths=("cond_ot", "vp", "ko", "kac", "hgf", "form"),
                                             collect=("",)))
    c.table.path_kwargs = ml_collections.ConfigDict()
    return c
