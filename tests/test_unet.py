"""The U-Net: shapes, pytree states, time dependence, per-example independence, jit, a training step, sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fm_jax as fj
from fm_jax.models import UNet, as_apply

SMALL = dict(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
             num_heads=2, num_groups=2)


def _rngs():
    """Parameter keys from the RBG generator: eager initialisation compiles one small kernel per parameter shape,
    which costs ~2.5× less CPU time with RBG than with threefry (this file's biggest fixed cost)."""
    return nnx.Rngs(jax.random.key(0, impl="unsafe_rbg"))


def _perturbed(apply_params, key, scale=0.1):
    """Parameters with noise added: the zero-initialised output conv makes the fresh model predict exactly 0."""
    leaves, treedef = jax.tree_util.tree_flatten(apply_params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def small():
    """A jitted `apply` (compiled once per input structure and reused across tests) and perturbed parameters."""
    apply, params = as_apply(UNet(4, **SMALL, rngs=_rngs()))
    return jax.jit(apply), _perturbed(params, jax.random.key(1)), params


Z = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
T = jnp.array([0.25, 0.75])


def test_shapes_and_zero_init(small):
    apply, params, fresh = small
    out = apply(fresh, Z, T)
    assert out.shape == (2, 8, 8, 4) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # zero-initialised last conv (ADM): the fresh model predicts 0
    assert float(jnp.max(jnp.abs(apply(params, Z, T)))) > 1e-3


def test_pytree_state_concatenates_channels(small):
    apply, params, _ = small
    x, p = Z[..., :2], Z[..., 2:]
    np.testing.assert_allclose(apply(params, (x, p), T), apply(params, Z, T), atol=1e-5)
    with pytest.raises(ValueError, match="expects z of shape"):
        jax.eval_shape(apply, params, x, T)


def test_time_dependence(small):
    apply, params, _ = small
    a, b = apply(params, Z, jnp.full((2,), 0.1)), apply(params, Z, jnp.full((2,), 0.9))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    # Per-example times: example i sees t_i only.
    mixed = apply(params, Z, jnp.array([0.1, 0.9]))
    np.testing.assert_allclose(mixed[0], a[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1], b[1], atol=1e-5)


def test_examples_are_independent(small):
    """GroupNorm and attention act per example, so example 0's output ignores the rest of the batch (what the
    batched Hutchinson estimator and data parallelism rely on)."""
    apply, params, _ = small
    full = apply(params, Z, T)
    np.testing.assert_allclose(full[:1], apply(params, Z[:1], T[:1]), atol=1e-5)
    z2 = Z.at[1].set(-Z[1])
    np.testing.assert_allclose(apply(params, z2, T)[0], full[0], atol=1e-5)


def test_jit_compiles_once_across_parameter_values(small):
    """Parameters and times are traced leaves: new values reuse the compiled model."""
    apply, params, _ = small
    apply(params, Z, T)
    compiled = apply._cache_size()
    apply(_perturbed(params, jax.random.key(5)), Z + 1.0, T / 2)
    assert apply._cache_size() == compiled


def test_gradient_steps_reduce_loss(small):
    """Adam on a fixed tiny batch and fixed loss key: the flow-matching loss falls (a deterministic objective)."""
    apply, _, params = small
    x1 = jnp.tile(jnp.linspace(-1, 1, 8)[None, :, None, None], (2, 1, 8, 4))
    path = fj.paths.AffinePath(fj.paths.CondOT())
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply)
    key = jax.random.key(0)
    tx = optax.adam(3e-3)

    @jax.jit
    def step(p, s):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, key, x1, path)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    s = tx.init(params)
    losses = []
    for _ in range(15):
        params, s, loss = step(params, s)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses


def test_bfloat16_compute_close_to_float32(small):
    apply32, params, _ = small
    apply16, _ = as_apply(UNet(4, dtype=jnp.bfloat16, **SMALL, rngs=_rngs()))
    a, b = apply32(params, Z, T), jax.jit(apply16)(params, Z, T)
    assert b.dtype == jnp.float32  # output in z's dtype; parameters stay float32
    # bf16 keeps 8 bits of mantissa: relative error ~1e-2 through a dozen layers.
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a)) < 5e-2


def test_bad_configurations():
    with pytest.raises(ValueError, match="divisible"):
        UNet(1, image_size=28, channel_mult=(1, 2, 2, 2), channels=8, num_groups=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="groups"):
        UNet(1, image_size=8, channels=12, channel_mult=(1,), num_groups=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="heads"):
        UNet(1, image_size=8, channels=6, channel_mult=(1,), num_groups=2, num_heads=4, attention_resolutions=(8,),
             rngs=nnx.Rngs(0))


def test_paper_sizes_by_config():
    """The CIFAR-10 model of the papers and the CPU MNIST model, counted without allocating (eval_shape)."""
    count = lambda m: sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    cifar = nnx.eval_shape(lambda: UNet.cifar10(rngs=nnx.Rngs(0)))
    assert 38.0e6 < count(cifar) < 38.6e6
    attention = [m for _, m in nnx.iter_graph(cifar) if isinstance(m, fj.models.unet.AttentionBlock)]
    assert len(attention) == 6  # at 16×16: 2 in the encoder, 3 in the decoder; and 1 in the middle
    mnist = nnx.eval_shape(lambda: UNet(1, image_size=28, channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                                        attention_resolutions=(7,), num_groups=4, rngs=nnx.Rngs(0)))
    assert 0.29e6 < count(mnist) < 0.31e6


def test_keyed_dropout_and_hashable_apply():
    """Dropout is live with a key (a fresh mask per key), off without one; `as_apply` is hashable and equal for two
    models of the same architecture (so compiled code is shared); a dropout U-Net trains."""
    make = lambda seed: as_apply(UNet(4, **{**SMALL, "attention_resolutions": ()}, dropout=0.3,  # noqa: E731
                                      rngs=nnx.Rngs(jax.random.key(seed, impl="unsafe_rbg"))))
    apply, params = make(0)
    apply_b, _ = make(1)
    assert apply == apply_b and hash(apply) == hash(apply_b)
    params = _perturbed(params, jax.random.key(2))
    f = jax.jit(apply)
    ev1, ev2 = f(params, Z, T), f(params, Z, T)
    tr1, tr1b = f(params, Z, T, key=jax.random.key(1)), f(params, Z, T, key=jax.random.key(1))
    tr2 = f(params, Z, T, key=jax.random.key(2))
    np.testing.assert_array_equal(ev1, ev2)  # evaluation is deterministic
    np.testing.assert_array_equal(tr1, tr1b)  # the same key gives the same mask
    assert float(jnp.abs(tr1 - tr2).max()) > 1e-3  # two keys give two masks
    assert float(jnp.abs(tr1 - ev1).max()) > 1e-3  # training differs from evaluation
    jitted_once = f._cache_size()
    f(params, Z, T, key=jax.random.key(3))
    assert f._cache_size() == jitted_once  # a new key value does not recompile

    x1 = jnp.tile(jnp.linspace(-1, 1, 8)[None, :, None, None], (2, 1, 8, 4))
    path = fj.paths.AffinePath(fj.paths.CondOT())
    tx = optax.adam(3e-3)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply, path=path)

    @jax.jit
    def step(p, s, k):
        (loss, _), g = jax.value_and_grad(lambda q: loss_fn(q, k, x1), has_aux=True)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    s, losses = tx.init(params), []
    for i in range(15):
        params, s, loss = step(params, s, jax.random.key(i % 2))  # two keys: the objective stays comparable
        losses.append(float(loss))
    assert min(losses[-4:]) < 0.8 * max(losses[:2]), losses
