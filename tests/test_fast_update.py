"""The flat optimiser / EMA update computes the same training as the per-leaf one, in float32 and float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fm_jax as fj
from fm_jax import paths as P
from fm_jax.training import flat_update


def _tree(dtype, scale=1.0):
    k = jax.random.split(jax.random.key(0), 4)
    return {"a": scale * jax.random.normal(k[0], (3, 4), dtype), "b": [scale * jax.random.normal(k[1], (5,), dtype),
            scale * jax.random.normal(k[2], (2, 2, 2), dtype)], "c": scale * jax.random.normal(k[3], (), dtype)}


def _run(opt, params, grads_seq):
    state = opt.init(params)
    for g in grads_seq:
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-13)])
@pytest.mark.parametrize("kw", [dict(clip_norm=1.0, warmup_steps=2, total_steps=6), dict(weight_decay=0.1)])
def test_flat_update_equals_per_leaf_optimizer(dtype, tol, kw):
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        params = _tree(dt)
        # Gradients of norm ~10: the clipping is active in the clipped configuration.
        grads_seq = [jax.tree_util.tree_map(lambda x, i=i: jnp.sin(x * (i + 1)) * 5, params) for i in range(5)]
        plain = fj.make_optimizer(1e-2, flatten=False, **kw)
        flat = fj.make_optimizer(1e-2, **kw)
        p1, s1 = jax.jit(functools.partial(_run, plain))(params, grads_seq)
        p2, s2 = jax.jit(functools.partial(_run, flat))(params, grads_seq)
        # Same state tree (checkpoints and sharding rules see no difference), same values to round-off.
        assert jax.tree_util.tree_structure(s1) == jax.tree_util.tree_structure(s2)
        for a, b in zip(jax.tree_util.tree_leaves((p1, s1)), jax.tree_util.tree_leaves((p2, s2)), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            # Adam's step is lr·m̂/(√v̂+ε) with |·| ≤ lr; the only reordering is the clipping norm's sum,
            # a relative change of ~1 ulp per step.
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=tol * 10, atol=tol * 1e-1)
        assert float(jnp.max(jnp.abs(p2["a"] - params["a"]))) > 1e-3  # the parameters did move


def test_flat_update_leaves_unsuitable_trees_to_the_inner_optimizer():
    opt = flat_update(optax.adam(1e-2))
    one = {"w": jnp.ones((3,))}
    mixed = {"w": jnp.ones((3,)), "h": jnp.ones((2,), jnp.bfloat16)}
    for params in (one, mixed):
        p1, s1 = _run(optax.adam(1e-2), params, [params] * 2)
        p2, s2 = _run(opt, params, [params] * 2)
        for a, b in zip(jax.tree_util.tree_leaves((p1, s1)), jax.tree_util.tree_leaves((p2, s2)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-6), ("float64", 1e-12)])
def test_train_steps_flat_equal_per_leaf(dtype, tol):
    """A few steps of the trainer (Adam + clipping + EMA) with the flat and the per-leaf optimiser."""
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        model = fj.models.MLP(2, 2, hidden=16, depth=2, time_features=8, rngs=nnx.Rngs(0))
        apply, params = fj.models.as_apply(model)
        params = jax.tree_util.tree_map(lambda x: x.astype(dt), params)
        loss_fn = functools.partial(fj.flow_matching_loss, apply=apply)
        path = P.AffinePath(P.CondOT())
        batch = jax.random.normal(jax.random.key(1), (32, 2), dt)
        out = []
        for flatten in (False, True):
            opt = fj.make_optimizer(3e-3, clip_norm=0.5, flatten=flatten)
            step = fj.make_train_step(loss_fn, opt, ema_decay=0.9)
            state = fj.init_train_state(jax.random.key(0), params, opt)
            losses = []
            for _ in range(4):
                state, m = step(state, batch, path)
                losses.append(float(m["loss"]))
            out.append((state, losses))
        (s1, l1), (s2, l2) = out
        np.testing.assert_allclose(l2, l1, rtol=tol)
        assert jax.tree_util.tree_structure(s1) == jax.tree_util.tree_structure(s2)
        for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2), strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=tol * 10, atol=tol)
        # The EMA is the per-leaf recursion e ← 0.9 e + 0.1 p: after moving, it differs from the parameters.
        assert not np.allclose(np.asarray(s2.ema_params["hidden_layers"][0]["kernel"]),
                               np.asarray(s2.params["hidden_layers"][0]["kernel"]))


# float64: `jax.nn.dot_product_attention` always takes its softmax in float32, ours in the input's precision, so
# the two agree to float32 round-off (~1e-7 relative) there; bfloat16: both take logits and softmax in float32.
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-6), ("bfloat16", 1e-6)])
def test_unet_attention_equals_dot_product_attention(dtype, tol):
    """The U-Net's written-out attention computes `jax.nn.dot_product_attention`'s function (and gradient)."""
    from fm_jax.models.unet import AttentionBlock

    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        blk = AttentionBlock(16, num_heads=2, num_groups=4, dtype=dt if dtype == "bfloat16" else None,
                             rngs=nnx.Rngs(0))
        blk.proj.kernel[...] = 0.3 * jax.random.normal(jax.random.key(5), blk.proj.kernel.shape)  # not zero-init
        if dtype == "float64":
            nnx.update(blk, jax.tree_util.tree_map(lambda p: p.astype(dt), nnx.state(blk)))
        x = jax.random.normal(jax.random.key(1), (3, 5, 5, 16), jnp.float32 if dtype == "bfloat16" else dt)

        def ref(x):
            b, h, w, c = x.shape
            qkv = blk.qkv(blk.norm(x)).reshape(b, h * w, 3, 2, c // 2)
            return x + blk.proj(jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(x.shape))

        def loss(f):
            return lambda x: jnp.sum(jnp.sin(f(x).astype(jnp.float32)))

        ours, theirs = jax.jit(lambda x: blk(x))(x), jax.jit(ref)(x)
        assert ours.dtype == theirs.dtype
        scale = float(jnp.max(jnp.abs(theirs.astype(jnp.float32))))
        np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(theirs, np.float64), atol=tol * scale)
        g1, g2 = jax.jit(jax.grad(loss(lambda x: blk(x))))(x), jax.jit(jax.grad(loss(ref)))(x)
        np.testing.assert_allclose(np.asarray(g1, np.float64), np.asarray(g2, np.float64), atol=tol * 10)
