"""The offline MNIST classifier whose penultimate layer is the feature network of MNIST-FID
(`fm_jax.image_metrics.mnist_feature_fn` trains it once and caches it).

A small MLP, 784 → 512 → 64 (features) → 10 with ReLU, trained on uint8 digits with uniform dequantisation, i.e.
on data as the generative models see it: x = 2 (k + u)/256 − 1, u ~ U[0, 1) fresh every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .._typing import Array, Key, Params


class MnistClassifier(nnx.Module):
    """A small MLP classifier for 28×28×1 digits: 784 → 512 → 64 (features) → 10, ReLU.

    Call: images (B, 28, 28, 1) in [−1, 1] → logits (B, 10); `features(images)` → (B, 64) (post-ReLU).
    Dense layers rather than convolutions: small convolutions (and their gradients) run ~10× below the matmul
    rate on a CPU, and this network must train in seconds there.
    """

    def __init__(self, *, hidden: int = 512, num_features: int = 64, num_classes: int = 10, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(28 * 28, hidden, rngs=rngs)
        self.dense = nnx.Linear(hidden, num_features, rngs=rngs)
        self.head = nnx.Linear(num_features, num_classes, rngs=rngs)

    def features(self, x: Array) -> Array:
        h = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
        return nnx.relu(self.dense(h))

    def __call__(self, x: Array) -> Array:
        return self.head(self.features(x))


def classifier_fns(seed: int = 0):
    """(logits(params, x), features(params, x), initial params) of `MnistClassifier` as pure functions."""
    graphdef, state = nnx.split(MnistClassifier(rngs=nnx.Rngs(seed)))

    def logits(params, x):
        return nnx.merge(graphdef, params)(x)

    def features(params, x):
        return nnx.merge(graphdef, params).features(x)

    return logits, features, state


def train_mnist_classifier(
    key: Key, images: np.ndarray, labels: np.ndarray, *, steps: int = 2000, batch_size: int = 128,
    learning_rate: float = 2e-3,
) -> Params:
    """Train `MnistClassifier` on uint8 images (N, 28, 28, 1) with uniform dequantisation; returns its state."""
    logits_fn, _, params = classifier_fns()
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    images = jnp.asarray(images)
    labels = jnp.asarray(labels, jnp.int32)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y).mean()

    @jax.jit
    def run(params, key):
        def body(carry, k):
            p, s = carry
            k_idx, k_u = jax.random.split(k)
            idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
            x = 2.0 * (images[idx].astype(jnp.float32) + jax.random.uniform(k_u, images[idx].shape)) / 256 - 1.0
            g = jax.grad(loss)(p, x, labels[idx])
            updates, s = tx.update(g, s, p)
            return (optax.apply_updates(p, updates), s), None

        (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), jax.random.split(key, steps))
        return params

    return run(params, key)


def classifier_accuracy(params: Params, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy of classifier `params` on uint8 images (bin-centre scaling)."""
    logits_fn, _, _ = classifier_fns()
    x = 2.0 * (jnp.asarray(images, jnp.float32) + 0.5) / 256 - 1.0
    return float(jnp.mean(jnp.argmax(jax.jit(logits_fn)(params, x), -1) == jnp.asarray(labels)))


__all__ = ["MnistClassifier", "classifier_accuracy", "classifier_fns", "train_mnist_classifier"]
