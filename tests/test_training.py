"""Trainer, loss and the experiment runner: learning happens, NaN never reaches parameters, bad input is named."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fm_jax as fj
from fm_jax import paths as P
from fm_jax.data import toy
from fm_jax.losses import LogitNormalTime, UniformTime


def _setup(hidden=64, seed=0, lr=3e-3, steps=1500):
    model = fj.models.MLP(2, 2, hidden=hidden, depth=3, time_features=16, rngs=nnx.Rngs(seed))
    apply, params = fj.models.as_apply(model)
    opt = fj.make_optimizer(lr, warmup_steps=50, total_steps=steps)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply)
    return apply, params, opt, loss_fn


def test_loss_falls_and_samples_reach_the_3x3_grid():
    steps = 1500
    apply, params, opt, loss_fn = _setup(steps=steps)
    path = P.AffinePath(P.CondOT())
    loop = fj.training.make_train_loop(loss_fn, opt, lambda k: toy.gaussian_grid(k, 256, std=0.1),
                                       steps_per_call=steps // 5, ema_decay=0.99)
    state = fj.init_train_state(jax.random.key(0), params, opt)
    batch = toy.gaussian_grid(jax.random.key(9), 4096, std=0.1)
    fixed_loss = lambda p: float(loss_fn(p, jax.random.key(10), batch, path)[0])  # same key: same t, noise
    before = fixed_loss(params)
    for _ in range(5):
        state, _ = loop(state, path)
    after = fixed_loss(state.params)
    # Untrained, the loss is E|x1 - x0|^2 ≈ 2.7 plus the random net's output; the trained floor is ≈ 2.35.
    assert after < 0.85 * before and after < 2.5, (before, after)
    res = fj.sample(jax.random.key(1), path, apply, state.ema_params, 1000, (2,), num_steps=50)
    ref = toy.gaussian_grid(jax.random.key(2), 1000, std=0.1)
    w2 = fj.metrics.wasserstein2(res.samples, ref)
    # An untrained model leaves N(0, I) in place: W2(N(0,I), grid) ≈ 0.9. A trained one gets well below.
    assert w2 < 0.35, w2


def test_scan_of_k_steps_equals_k_single_steps():
    apply, params, opt, loss_fn = _setup(hidden=16, steps=100)
    path = P.AffinePath(P.VP())
    batches = toy.half_moons(jax.random.key(3), 4 * 32).reshape(4, 32, 2)
    step = fj.make_train_step(loss_fn, opt)
    scan = fj.training.make_scan_train_step(loss_fn, opt)
    s1 = fj.init_train_state(jax.random.key(0), params, opt)
    for i in range(4):
        s1, _ = step(s1, batches[i], path)
    s2, metrics = scan(fj.init_train_state(jax.random.key(0), params, opt), batches, path)
    assert metrics["loss"].shape == (4,)
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_non_finite_loss_skips_the_update_and_keeps_parameters():
    apply, params, opt, loss_fn = _setup(hidden=16)

    def poisoned(p, key, batch, path):
        loss, aux = loss_fn(p, key, batch, path)
        return loss * jnp.nan, aux

    step = fj.training.make_train_step(poisoned, opt, check_inputs=False)
    state = fj.init_train_state(jax.random.key(0), params, opt)
    before = jax.tree_util.tree_map(np.asarray, state.params)
    state, m = step(state, jnp.ones((8, 2)), P.AffinePath(P.CondOT()))
    assert int(m["skipped"]) == 1 and int(state.step) == 1
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_nan_in_a_host_batch_is_a_clear_error():
    _, params, opt, loss_fn = _setup(hidden=16)
    step = fj.make_train_step(loss_fn, opt)
    state = fj.init_train_state(jax.random.key(0), params, opt)
    batch = np.ones((8, 2), np.float32)
    batch[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        step(state, batch, P.AffinePath(P.CondOT()))


def test_mismatched_model_output_shape_is_a_clear_error():
    model = fj.models.MLP(2, 3, hidden=8, time_features=4, rngs=nnx.Rngs(0))
    apply, params = fj.models.as_apply(model)
    with pytest.raises(ValueError, match="model prediction has shape"):
        fj.flow_matching_loss(params, jax.random.key(0), jnp.ones((4, 2)), P.AffinePath(P.CondOT()), apply=apply)


def test_time_samplers_and_weighting():
    t = UniformTime(stratified=True).sample(jax.random.key(0), 8)
    assert np.all((np.floor(np.asarray(t) * 8)) == np.arange(8))
    t = LogitNormalTime().sample(jax.random.key(1), 10_000)
    assert 0 < float(t.min()) and float(t.max()) < 1 and abs(float(jnp.median(t)) - 0.5) < 0.02
    apply, params, _, _ = _setup(hidden=8)
    path, x = P.AffinePath(P.CondOT()), jnp.ones((16, 2))
    plain, _ = fj.flow_matching_loss(params, jax.random.key(0), x, path, apply=apply)
    doubled, _ = fj.flow_matching_loss(params, jax.random.key(0), x, path, apply=apply, weighting=lambda t: 2 * t**0)
    np.testing.assert_allclose(doubled, 2 * plain, rtol=1e-6)


def test_optimizer_schedule_warms_up_and_decays():
    opt = fj.make_optimizer(1.0, warmup_steps=10, total_steps=100, clip_norm=None)
    params = {"w": jnp.zeros(())}
    state = opt.init(params)
    lrs = []
    for _ in range(100):
        upd, state = opt.update({"w": jnp.ones(())}, state, params)
        lrs.append(-float(upd["w"]))
    assert lrs[0] < lrs[9] and lrs[-1] < 0.05 * max(lrs)
    assert isinstance(fj.make_optimizer(1e-3, weight_decay=0.1), optax.GradientTransformation)


def test_model_of_the_wrong_state_size_is_one_clear_error():
    """A model built for 2-D data on ForM's phase-space state (x, p) fails with one line naming the fix."""
    apply, params = fj.models.as_apply(fj.models.MLP(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"state of ForcePath.*4 values.*MLP\(4, \.\.\.\)"):
        fj.flow_matching_loss(params, jax.random.key(0), jnp.ones((8, 2)), P.ForcePath(), apply=apply)


def test_empty_batch_and_zero_steps_per_call_are_clear_errors():
    apply, params = fj.models.as_apply(fj.models.MLP(2, 2, hidden=8, depth=1, time_features=4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="batch is empty"):
        fj.flow_matching_loss(params, jax.random.key(0), jnp.ones((0, 2)), P.AffinePath(P.CondOT()), apply=apply)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply)
    with pytest.raises(ValueError, match="steps_per_call must be a positive integer"):
        fj.training.make_train_loop(loss_fn, fj.make_optimizer(1e-3), lambda k: jnp.ones((4, 2)), steps_per_call=0)
