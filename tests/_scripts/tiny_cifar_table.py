"""A reduced CIFAR-10 table config for the CPU proof of the image pipeline (`tests/test_image_pipeline.py`).

Every paper's CIFAR-10 path (`configs/cifar10_table.py`) on a tiny random dataset: a one-level 8-channel U-Net,
20 steps, 8 samples, FID with Inception from random weights, Euler 1 / 2, dopri5, EDM's sampler for HGF,
bits/dim of 4 test images. The data, weights and caches lie under `$FM_JAX_TINY_ROOT`; `$FM_JAX_TINY_PATHS`
(comma-separated labels) restricts the rows.
"""

import os

from experiments.configs import cifar10_table


def get_config():
    c = cifar10_table.get_config()
    root = os.environ["FM_JAX_TINY_ROOT"]
    c.dataset.data_dir = os.path.join(root, "data")
    c.model.update(dict(channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(), num_heads=1,
                        dropout=0.0, num_groups=4))
    c.train.update(dict(steps=20, batch_size=8, learning_rate=3e-3, warmup_steps=2, steps_per_call=10,
                        checkpoint_every=10, keep_checkpoints=2, bf16=False, ema_decay=0.9))
    c.eval.update(dict(at_steps=(20,), num_samples=8, batch_size=8, step_counts=(1, 2), adaptive_solver="dopri5",
                       nll_samples=4, nll_tolerance=1e-2, inception_weights=os.path.join(root, "inception.npz")))
    if os.environ.get("FM_JAX_TINY_PATHS"):
        c.table.paths = tuple(os.environ["FM_JAX_TINY_PATHS"].split(","))
    c.table.path_kwargs = dict(ko=dict(num_noise=4, data_dir=c.dataset.data_dir,
                                       cache_dir=os.path.join(root, "ko_cache")))
    return c
