"""A reduced CIFAR-10 table config for the CPU proof of the image pipeline (`tests/test_image_pipeline.py`).

Every paper's CIFAR-10 path (`configs/cifar10_table.py`) on a tiny random dataset: a one-level 8-channel U-Net,
20 steps, 8 samples, FID with Inception from random weights, Euler 1 / 2, dopri5, EDM's sampler for HGF,
bits/dim of 4 test images. The data, weights and caches lie under `$FM_JAX_TINY_ROOT`; `$FM_JAX_TINY_PATHS`
(comma-separated labels) restricts the rows. `python tests/_scripts/tiny_cifar_table.py ROOT` writes that data
(32 train and 16 test random images in tfds's `cifar10` format) and the random Inception weights under ROOT:

    python tests/_scripts/tiny_cifar_table.py /tmp/tiny
    FM_JAX_TINY_ROOT=/tmp/tiny python -m experiments.image_table --config tests/_scripts/tiny_cifar_table.py \
        --workdir /tmp/tiny/table
"""

import math
import os
import sys

import numpy as np


def random_inception_weights(filename: str, seed: int = 0) -> None:
    """He-normal kernels and identity BatchNorm in the converter's .npz format (activations stay O(1))."""
    from fm_jax.models import inception

    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in inception.fid_inception_shapes().items():
        if name.endswith("kernel"):
            arrays[name] = rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[:3])), shape).astype(np.float32)
        else:
            arrays[name] = np.full(shape, 1.0 if name.endswith(("scale", "var")) else 0.0, np.float32)
    inception.write_fid_inception_weights(arrays, filename, source_sha256="random")


def prepare(root: str, seed: int = 0) -> None:
    """Random uint8 CIFAR-10-format train (32) and test (16) splits under `root/data`, weights `root/inception.npz`."""
    from fm_jax.data.tfds_builders import write_cifar10_format

    rng = np.random.default_rng(seed)
    splits = {s: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
              for s, n in (("train", 32), ("test", 16))}
    write_cifar10_format(os.path.join(root, "data"), splits)
    random_inception_weights(os.path.join(root, "inception.npz"), seed)


def get_config():
    from experiments.configs import cifar10_table

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


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    prepare(sys.argv[1])
