"""Conditioning and classifier-free guidance: the batch format, label dropout, per-example keys, guided
sampling for first-order and phase-space paths, and a class-conditional digits run where guidance raises a
classifier's accuracy on the samples."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fm_jax import distributed, losses, models, sampling, training
from fm_jax import paths as P
from fm_jax.losses import Batch, ConditionDropout


def _recording_apply(record):
    """A fake batched model that records its cond and returns a cond-dependent prediction."""

    def apply(params, z, t, cond=None, *, key=None):
        record.append(cond)
        shift = 0.0 if cond is None else cond.astype(z.dtype)[:, None]
        return params * z + shift

    return apply


def test_plain_array_and_batch_without_cond_give_the_same_loss():
    apply = _recording_apply([])
    x1 = jax.random.normal(jax.random.key(0), (16, 2))
    path = P.AffinePath(P.CondOT())
    a, _ = losses.flow_matching_loss(jnp.asarray(0.5), jax.random.key(1), x1, path, apply=apply)
    b, _ = losses.flow_matching_loss(jnp.asarray(0.5), jax.random.key(1), Batch(x1), path, apply=apply)
    assert float(a) == float(b)
    with pytest.raises(TypeError, match="Batch"):
        losses.flow_matching_loss(jnp.asarray(0.5), jax.random.key(1), {"x": x1}, path, apply=apply)


def test_cond_reaches_the_model_and_dropout_replaces_it_with_the_null_class():
    n, null = 4000, 10
    record = []
    apply = _recording_apply(record)
    x1 = jnp.zeros((n, 2))
    labels = jnp.arange(n) % 10
    path = P.AffinePath(P.CondOT())
    for p in (0.0, 0.3, 1.0):
        record.clear()
        drop = ConditionDropout(p, jnp.asarray(null))
        losses.flow_matching_loss(jnp.asarray(1.0), jax.random.key(2), Batch(x1, labels), path, apply=apply,
                                  cond_dropout=drop)
        seen = np.asarray(record[-1])
        dropped = seen == null
        np.testing.assert_array_equal(seen[~dropped], np.asarray(labels)[~dropped])  # kept labels unchanged
        # Binomial(n, p): 5 standard deviations.
        assert abs(dropped.mean() - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12
    with pytest.raises(ValueError, match="cond"):
        losses.flow_matching_loss(jnp.asarray(1.0), jax.random.key(2), x1, path, apply=apply, cond_dropout=drop)


def test_per_example_keys_make_the_loss_independent_of_the_split():
    x1 = jax.random.normal(jax.random.key(3), (12, 2))
    labels = jnp.arange(12) % 3
    apply = _recording_apply([])
    path = P.KacPath()
    key = jax.random.key(4)
    kw = dict(apply=apply, cond_dropout=ConditionDropout(0.5, jnp.asarray(3)))
    full, _ = losses.flow_matching_loss(jnp.asarray(0.7), key, Batch(x1, labels, jnp.arange(12)), path, **kw)
    halves = [
        losses.flow_matching_loss(jnp.asarray(0.7), key, Batch(x1[s], labels[s], jnp.arange(12)[s]), path, **kw)[0]
        for s in (slice(0, 5), slice(5, 12))
    ]
    np.testing.assert_allclose(float(full), (5 * float(halves[0]) + 7 * float(halves[1])) / 12, rtol=1e-6)
    # `distributed.index_batch` builds these batches: a host holding rows [5, 12) passes start=5.
    part = distributed.index_batch(x1[5:], start=5, cond=labels[5:])
    assert isinstance(part, Batch) and part.index.tolist() == list(range(5, 12))
    assert float(losses.flow_matching_loss(jnp.asarray(0.7), key, part, path, **kw)[0]) == float(halves[1])


def test_guided_prediction_is_the_cfg_mixture_and_w0_is_the_conditional_model():
    apply = lambda params, z, t, cond=None, *, key=None: z * 0.0 + cond.astype(z.dtype)[:, None] + t
    path = P.AffinePath(P.CondOT())
    z = jnp.ones((3, 2))
    cond = jnp.array([1, 2, 3])
    t = jnp.asarray(0.25)
    plain = sampling.model_vector_field(path, apply, None, cond)(t, z)
    w0 = sampling.model_vector_field(path, apply, None, cond, 0.0, jnp.asarray(7))(t, z)
    w2 = sampling.model_vector_field(path, apply, None, cond, 2.0, jnp.asarray(7))(t, z)
    np.testing.assert_allclose(np.asarray(w0), np.asarray(plain))
    expected = 3.0 * (cond[:, None] + 0.25) - 2.0 * (7 + 0.25) * jnp.ones((3, 2))
    np.testing.assert_allclose(np.asarray(w2), np.asarray(expected), rtol=1e-6)
    with pytest.raises(ValueError, match="null_cond"):
        sampling.model_vector_field(path, apply, None, cond, 2.0)


def test_guidance_on_form_mixes_forces_and_keeps_the_speed_bound():
    path = P.ForcePath(c=2.0)
    # A model whose conditional and unconditional forces differ hugely: guidance amplifies the difference.
    apply = lambda params, z, t, cond=None, *, key=None: 1e4 * (cond.astype(z.x.dtype)[:, None] - 0.5) + 0 * z.x
    res = sampling.sample(jax.random.key(5), path, apply, None, 64, (2,), num_steps=20,
                          cond=jnp.zeros(64, jnp.int32), guidance_scale=jnp.asarray(5.0), null_cond=jnp.asarray(1),
                          save_trajectory=21)
    x = np.asarray(res.trajectory.x)
    speed = np.linalg.norm(np.diff(x, axis=0), axis=-1) / (1 / 20)
    # |dx/dt| < c on every step, for any force (the force saturates the speed at c; differences of float32
    # positions of size ~3 over dt = 1/20 carry ~1e-5 of rounding).
    assert np.all(np.isfinite(x)) and speed.max() < 2.0 * (1 + 1e-5)


def test_class_embedding_models_accept_labels_and_null_class():
    mlp = models.MLP(2, 2, hidden=16, depth=1, num_classes=3, rngs=nnx.Rngs(0))
    assert mlp.null_class == 3
    z, t = jnp.ones((4, 2)), jnp.full(4, 0.5)
    a = mlp(z, t, jnp.array([0, 1, 2, 3]))
    assert a.shape == (4, 2) and not np.allclose(np.asarray(a[0]), np.asarray(a[1]))
    np.testing.assert_allclose(np.asarray(mlp(z, t)), np.asarray(mlp(z, t, jnp.full(4, 3))), rtol=1e-6)
    with pytest.raises(ValueError, match="integers"):
        mlp(z, t, jnp.ones(4))
    with pytest.raises(ValueError, match="unconditional"):
        models.MLP(2, 2, hidden=16, depth=1, rngs=nnx.Rngs(0))(z, t, jnp.zeros(4, jnp.int32))
    unet = models.UNet(1, image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                       num_heads=1, num_groups=4, num_classes=3, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 8, 8, 1))
    out = unet(x, jnp.full(2, 0.3), jnp.array([0, 2]))
    assert out.shape == (2, 8, 8, 1) and unet.null_class == 3
    apply, params = models.as_apply(unet)
    np.testing.assert_allclose(np.asarray(apply(params, x, jnp.full(2, 0.3), jnp.array([0, 2]))), np.asarray(out),
                               rtol=1e-5, atol=1e-6)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int32)  # (1797, 8, 8) in [0, 16]


def _to_classifier_images(x8: np.ndarray) -> np.ndarray:
    """8×8 digits in [-1, 1] → uint8 28×28×1 images for the MNIST feature classifier."""
    up = jax.image.resize(jnp.asarray(x8).reshape(-1, 8, 8), (x8.shape[0], 28, 28), "linear")
    return np.asarray(jnp.clip((up + 1.0) * 127.5, 0, 255)).astype(np.uint8)[..., None]


def test_guidance_raises_classifier_accuracy_on_class_conditional_digits():
    from fm_jax.models.mnist_classifier import classifier_accuracy, train_mnist_classifier

    images, labels = _digits()
    x = images.reshape(-1, 64) / 8.0 - 1.0  # [-1, 1]
    # The classifier: the project's MNIST feature classifier, trained on the digits upsampled to 28×28.
    clf = train_mnist_classifier(jax.random.key(0), _to_classifier_images(x), labels, steps=400)
    assert classifier_accuracy(clf, _to_classifier_images(x), labels) > 0.9  # it can read the digits

    model = models.MLP(64, 64, hidden=256, depth=3, num_classes=10, rngs=nnx.Rngs(1))
    apply, params = models.as_apply(model)
    path = P.AffinePath(P.CondOT())
    data, ys = jnp.asarray(x), jnp.asarray(labels)

    def batch_fn(key):
        idx = jax.random.randint(key, (256,), 0, data.shape[0])
        return Batch(data[idx], ys[idx])

    loss_fn = functools.partial(losses.flow_matching_loss, apply=apply,
                                cond_dropout=ConditionDropout(0.2, jnp.asarray(10)))
    steps = 1000
    opt = training.make_optimizer(2e-3, total_steps=steps)
    state = training.init_train_state(jax.random.key(2), params, opt)
    loop = training.make_train_loop(loss_fn, opt, batch_fn, steps_per_call=steps)
    state, metrics = loop(state, path)
    assert np.isfinite(np.asarray(metrics["loss"])).all()

    n = 1000
    want = jnp.arange(n) % 10
    acc = {}
    for w in (0.0, 3.0):
        out = sampling.sample(jax.random.key(3), path, apply, state.params, n, (64,), num_steps=16, cond=want,
                              guidance_scale=jnp.asarray(w), null_cond=jnp.asarray(10))
        acc[w] = classifier_accuracy(clf, _to_classifier_images(np.asarray(out.samples)), np.asarray(want))
    print("accuracy by guidance scale", acc)
    # Each accuracy is a binomial proportion over n samples (SE sqrt(p (1 - p) / n)); the gain must exceed
    # 3 standard errors of the difference of two independent proportions (conservative: both use the same
    # source draws, which correlates them positively).
    se = np.sqrt(sum(a * (1 - a) for a in acc.values()) / n)
    assert acc[3.0] - acc[0.0] > 3 * se, (acc, se)
