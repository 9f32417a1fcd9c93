"""The toy configuration of `default.py` for the data-parallel, multi-host trainer (`experiments.train_distributed`),
with its launch settings: `distributed.auto_detect` (let JAX find a Cloud TPU pod slice), `model_axis` (size of the
mesh's `model` axis), `bf16` (bfloat16 compute, float32 parameters), `log_every` (steps between metric rows; also
the host sync emulated CPU devices need every ~20 steps).
"""

import ml_collections

from experiments.configs import default


def get_config(label: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config(label)
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.distributed = ml_collections.ConfigDict(dict(auto_detect=False, model_axis=1, bf16=False, log_every=20))
    return c
