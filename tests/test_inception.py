"""The FID Inception-v3 against the PyTorch reference, with random weights converted by our converter.

Reference: torch-fidelity's `FeatureExtractorInceptionV3` (pure PyTorch, the same FID network and state-dict names
as pytorch-fid), built with random weights and random BatchNorm statistics, saved as a .pth, converted by
`convert_pytorch_fid_weights` and loaded by `fm_jax.fid.inception_network`. Compared:
- pytorch-fid's pipeline (`F.interpolate(bilinear, align_corners=False)` of images in [0, 1], then 2x − 1, the
  FID blocks, the spatial mean), from 32×32 float images and from 8-bit images (our `quantize=True`);
- torch-fidelity's own forward (uint8 input, TensorFlow-1 resize, (k − 128)/128) against our `TF1Bilinear()`.
Features agree to 1e-4 relative (max |Δ| / max |f|; float32 through ~95 convolutions, measured ~1e-6); the
variants that differ from the FID network (other resize) differ by > 1e-2, so the check can fail.

Needs PyTorch and torch-fidelity (test-only; `pip install "torch==2.13.0"` then
`pip install --no-deps torch-fidelity==0.4.0`: its package metadata requires torchvision, which the imported
module does not use). Skipped only when torch itself is not importable.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types

import jax
import numpy as np
import pytest

from fm_jax import fid as F
from fm_jax.models import convert_inception
from fm_jax.models import inception as I

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # only then are the comparisons skipped
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not importable: the reference network needs it "
                                                       "(pip install torch==2.13.0)")

_BLOCKS = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
           "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
           "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"]


@contextlib.contextmanager
def _forgetting(prefix: str):
    """Remove the modules named `prefix*` from `sys.modules` on exit (the objects imported stay usable)."""
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
            del sys.modules[name]


def _torch_fidelity_inception_module():
    """torch_fidelity.feature_extractor_inceptionv3, imported without the package `__init__` (which imports
    torchvision for other feature extractors; this module needs only torch)."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        pytest.fail("torch-fidelity is not installed: pip install --no-deps torch-fidelity==0.4.0")
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    except Exception:  # the package __init__ imports torchvision: missing, or not loadable beside this torch
        with _forgetting("torch_fidelity"):
            package = types.ModuleType("torch_fidelity")
            package.__path__ = list(spec.submodule_search_locations)
            sys.modules["torch_fidelity"] = package
            return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, request):
    """(torch network with random weights, our converted weights loaded, path of the .pth)."""
    fe = _torch_fidelity_inception_module()

    class RandomInception(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random initialisation
            del state_dict, strict, assign

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads only spin on a busy 2-core machine (3× the CPU time, measured)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    original = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *args, **kwargs: {}  # never download
    try:
        torch.manual_seed(0)
        net = RandomInception("inception-v3-compat", ["2048"])
    finally:
        fe.load_state_dict_from_url = original
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.normal_(0.0, 0.2)
        m.momentum = None  # running statistics = the calibration batch's statistics
        m.reset_running_stats()
    net.train()
    with torch.no_grad():  # calibrate the running statistics so that activations stay O(1) through the depth
        h = torch.rand(2, 3, 96, 96) * 2 - 1
        for name in _BLOCKS[:-1]:
            h = getattr(net, name)(h)
    net.eval()
    assert all(float(m.running_var.min()) > 0 for m in bns)
    d = tmp_path_factory.mktemp("inception")
    torch.save(net.state_dict(), d / "random.pth")
    I.convert_pytorch_fid_weights(str(d / "random.pth"), str(d / "random.npz"))
    return net, I.load_fid_inception(str(d / "random.npz")), str(d / "random.pth")


def _torch_blocks(net, x):
    with torch.no_grad():
        for name in _BLOCKS:
            x = getattr(net, name)(x)
        return torch.flatten(x, 1).numpy()


def pytorch_fid_features(net, images01: np.ndarray) -> np.ndarray:
    """pytorch-fid's `InceptionV3.forward` (resize_input, normalize_input, block 3) on NHWC images in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images01.transpose(0, 3, 1, 2), np.float32))
    x = TF.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return _torch_blocks(net, 2 * x - 1)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@needs_torch
def test_features_match_pytorch_fid_from_32x32(reference):
    """Image 0: floats in [−1, 1] (quantize=False). Image 1: 8-bit levels k, which fm_jax holds as bin-centre
    floats 2(k + ½)/256 − 1 and `quantize=True` maps back to pytorch-fid's PNG value k/255."""
    net, weights, _ = reference
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    k = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    x8 = (2.0 * (k + 0.5) / 256 - 1).astype(np.float32)
    ref = pytorch_fid_features(net, np.stack([(x[0] + 1) / 2, k[1] / np.float32(255)]))
    ours = np.asarray(F.inception_network(weights, quantize=False)(x))[0]
    ours8 = np.asarray(F.inception_network(weights, quantize=True)(x8))[1]
    assert ours.shape == (2048,) and np.all(np.isfinite(ours))
    assert np.std(ref) > 1e-2  # the random network is not degenerate
    assert _rel(ours, ref[0]) <= 1e-4, _rel(ours, ref[0])
    assert _rel(ours8, ref[1]) <= 1e-4, _rel(ours8, ref[1])


@needs_torch
def test_features_match_torch_fidelity_forward(reference):
    net, weights, _ = reference
    k = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    with torch.no_grad():
        (ref,) = net(torch.from_numpy(k.transpose(0, 3, 1, 2).copy()))  # uint8 → TF1 resize → (k − 128)/128
    ref = ref.numpy()
    x = (k.astype(np.float32) - 128) / 128
    ours = np.asarray(F.inception_network(weights, quantize=False, resize=I.TF1Bilinear())(x))
    assert _rel(ours, ref) <= 1e-4, _rel(ours, ref)
    # The other resize on the same input is a different protocol: the comparison above can tell them apart.
    other = np.asarray(F.inception_network(weights, quantize=False, resize=I.HalfPixelBilinear())(x))
    assert _rel(other, ref) > 1e-2, _rel(other, ref)


@needs_torch
def test_converter_cli(reference, tmp_path, capsys):
    _, weights, pth = reference
    out = tmp_path / "cli.npz"
    convert_inception.main([pth, str(out)])
    assert "not pytorch-fid's released file" in capsys.readouterr().out  # random weights: another SHA-256
    assert I.load_fid_inception(str(out)).fingerprint == weights.fingerprint


@needs_torch
def test_resize_matrices_match_torch():
    """Both resizes against PyTorch on a ramp, up and down (no antialiasing), per axis."""
    fe = _torch_fidelity_inception_module()
    img = torch.arange(37 * 23, dtype=torch.float32).reshape(1, 1, 37, 23)
    for size in (299, 11):
        ref = TF.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        ours = np.asarray(I.HalfPixelBilinear()(jax.numpy.asarray(img.numpy().transpose(0, 2, 3, 1)), size))
        np.testing.assert_allclose(ours[0, :, :, 0], ref, rtol=1e-6, atol=1e-3)  # values up to 850: float32
        ref = fe.interpolate_bilinear_2d_like_tensorflow1x(img, size=(size, size), align_corners=False)[0, 0]
        ours = np.asarray(I.TF1Bilinear()(jax.numpy.asarray(img.numpy().transpose(0, 2, 3, 1)), size))
        np.testing.assert_allclose(ours[0, :, :, 0], ref.numpy(), rtol=1e-6, atol=1e-3)


@needs_torch
def test_network_compiles_once_per_batch_size(reference):
    """Any input size (and grey images, repeated to RGB) reaches the network as (2, 299, 299, 3): no recompile."""
    _, weights, _ = reference
    net = F.inception_network(weights, quantize=False)
    rng = np.random.default_rng(2)
    net(rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32))
    before = F._network_forward._cache_size()
    assert net(rng.uniform(-1, 1, (2, 64, 48, 3)).astype(np.float32)).shape == (2, 2048)
    grey = rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(net(grey)), np.asarray(net(np.repeat(grey, 3, -1))), rtol=1e-6,
                               atol=1e-6)
    assert F._network_forward._cache_size() == before


def test_missing_weights_say_where_to_get_them(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere.npz")
    with pytest.raises(FileNotFoundError) as e:
        F.inception_network(missing)
    for part in (missing, I.PYTORCH_FID_WEIGHTS_FILE, I.PYTORCH_FID_WEIGHTS_URL, "convert_inception"):
        assert part in str(e.value)
    monkeypatch.setenv(I.INCEPTION_WEIGHTS_ENV, missing)
    assert I.default_inception_weights_path() == missing
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        I.load_fid_inception()
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="convert"):
        I.load_fid_inception(str(tmp_path / "w.pth"))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an fm_jax FID Inception"):
        I.load_fid_inception(str(tmp_path / "other.npz"))


def test_state_dict_conversion_checks_names_and_shapes():
    """The name map on a synthetic state dict (no PyTorch needed): layouts, dropped entries, clear errors."""
    shapes = I._expected_shapes()
    to_torch = {v: k for k, v in I._TORCH_TO_OURS.items()}
    sd = {}
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        module, _, leaf = name.rpartition(".")
        module, _, layer = module.rpartition(".")
        torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
        sd[f"{module}.{to_torch[f'{layer}.{leaf}']}"] = rng.normal(size=torch_shape).astype(np.float32)
    sd["fc.weight"], sd["fc.bias"] = np.zeros((1008, 2048)), np.zeros(1008)
    sd["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.array(7)
    arrays = I.state_dict_to_arrays(sd)
    assert set(arrays) == set(shapes) and len(arrays) == 470
    w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # (O, I, 1, 7) → (1, 7, I, O)
    np.testing.assert_array_equal(arrays["Mixed_6b.branch7x7_2.conv.kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(arrays["Mixed_7c.branch_pool.bn.var"],
                                  sd["Mixed_7c.branch_pool.bn.running_var"])
    with pytest.raises(ValueError, match="AuxLogits"):
        I.state_dict_to_arrays({**sd, "AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1))})
    with pytest.raises(ValueError, match="missing"):
        I.state_dict_to_arrays({k: v for k, v in sd.items() if not k.startswith("Mixed_7c.branch1x1.")})
    with pytest.raises(ValueError, match="wrong shape"):
        I.state_dict_to_arrays({**sd, "Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 5, 5))})


def test_input_validation():
    with pytest.raises(ValueError, match="75"):
        I._abstract_model()(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="NHWC"):
        I.preprocess(np.zeros((2, 3, 32, 32), np.float32))
    x = I.preprocess(np.zeros((2, 32, 32, 1), np.float32))
    assert x.shape == (2, 299, 299, 3)
