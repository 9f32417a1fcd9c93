"""`python -m experiments.bench_images --config experiments/configs/bench_images.py`: U-Net throughput.

Override any field on the command line, e.g. `--config.cifar.cpu_batch=2` (the CIFAR-10 model on CPU at a tiny
batch), `--config.peak_tflops=500` (MFU against a peak of your choice), `--config.quick=True` (smoke run).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.quick = False  # fewer repetitions (smoke test)
    c.seed = 0
    c.rounds = 5  # interleaved rounds (JAX, PyTorch, matmul in turn); figures are medians over rounds
    c.steps_per_round = 5  # train steps timed per round and framework
    c.torch = True  # the PyTorch twin beside ours, when importable
    c.torch_threads = 2
    # CPU devices the process is split into (`fm_jax.distributed.use_host_cores`): 0 = one per core, where the
    # data-parallel MNIST step, sampler and convolution stack run beside the single-device ones; 1 = no split.
    c.host_devices = 0
    c.peak_tflops = 0.0  # > 0: MFU against this peak instead of the device table (or, on CPU, the matmul rate)
    c.conv_stack = True  # 8 convolutions 3×3 + SiLU, forward + backward, JAX vs PyTorch (the U-Net's main op)
    # XLA compiler options tried on the MNIST train step (per compilation, same process, interleaved).
    c.xla_variants = ml_collections.ConfigDict(dict(
        onednn=dict(xla_cpu_use_onednn=True),
        xnn_graph=dict(xla_cpu_experimental_xnn_graph_fusion_mode="XNN_GRAPH_FUSION_MODE_GREEDY"),
        no_xnnpack=dict(xla_cpu_use_xnnpack=False),
        fast_runtime=dict(xla_cpu_opt_preset="CPU_OPT_PRESET_FAST_RUNTIME"),
    ))
    c.try_xla_variants = True  # only on CPU
    c.compare_per_leaf_update = True  # also time the step with the per-leaf optimiser (make_optimizer(flatten=False))
    c.profile = True  # on CPU: per-op-class breakdown of the MNIST step (experiments/profile_unet.py)
    # The CPU-sized MNIST model of experiments/configs/image_base.py (0.30 M parameters).
    c.mnist = ml_collections.ConfigDict(dict(
        enabled=True, image_size=28, in_channels=1, batch=64, channels=16, channel_mult=(1, 2, 2),
        num_res_blocks=1, attention_resolutions=(7,), num_heads=4, dropout=0.0, num_groups=4,
        learning_rate=2e-3, clip_norm=1.0, ema_decay=0.995, dtype="float32", sample_batch=16, sample_steps=100,
    ))
    # The CIFAR-10 model of the papers (UNet.cifar10, 38.3 M parameters): run on an accelerator at `batch`
    # (bf16 compute, float32 parameters); on CPU only when cpu_batch > 0 (float32).
    c.cifar = ml_collections.ConfigDict(dict(
        enabled=True, image_size=32, in_channels=3, batch=128, cpu_batch=0, channels=128, channel_mult=(1, 2, 2, 2),
        num_res_blocks=2, attention_resolutions=(16,), num_heads=4, dropout=0.1, num_groups=32,
        learning_rate=2e-4, clip_norm=1.0, ema_decay=0.9999, dtype="bfloat16", sample_batch=256, sample_steps=100,
    ))
    return c
