"""Minibatch couplings, sampling given a source draw, the exact Kac bridge, and OT-coupled Cond-OT training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from scipy.optimize import linear_sum_assignment

from fm_jax import couplings, kac, losses, metrics, models, sampling, training
from fm_jax import paths as P
from fm_jax.data import toy
from tests.all_paths import ALL_PATHS

# The path is a traced argument (its hyper-parameters are array leaves), as in the library's own compiled calls.
_given = jax.jit(lambda path, key, z0, x1, t: path.sample_conditional_given_source(key, z0, x1, t))
_given_batch = jax.jit(lambda path, *args: jax.vmap(path.sample_conditional_given_source)(*args))

COUPLABLE = [pytest.param(c, id=c.name) for c in ALL_PATHS if isinstance(c.make(), P.AbstractCouplablePath)]


def _cost(x0, x1, idx):
    return float(np.mean(np.sum((np.asarray(x0)[np.asarray(idx)] - np.asarray(x1)) ** 2, -1)))


def test_exact_ot_is_the_optimal_assignment():
    k0, k1 = jax.random.split(jax.random.key(0))
    x0, x1 = jax.random.normal(k0, (64, 3)), jax.random.normal(k1, (64, 3)) + 1.0
    idx = jax.jit(couplings.ExactOTCoupling().source_indices)(None, x0, x1)
    assert sorted(np.asarray(idx).tolist()) == list(range(64))  # a permutation
    c = np.asarray(couplings.squared_distances(x0, x1), np.float64)
    rows, cols = linear_sum_assignment(c)
    np.testing.assert_allclose(_cost(x0, x1, idx), c[rows, cols].mean(), rtol=1e-5)
    assert _cost(x0, x1, idx) < _cost(x0, x1, couplings.IndependentCoupling().source_indices(None, x0, x1))


def test_sinkhorn_approaches_exact_ot_and_does_not_retrace_over_epsilon():
    k0, k1, k2 = jax.random.split(jax.random.key(1), 3)
    x0, x1 = jax.random.normal(k0, (128, 2)), toy.eight_gaussians(k1, 128)
    traces = []

    @jax.jit
    def pair(coupling, key):
        traces.append(1)
        return coupling.source_indices(key, x0, x1)

    exact = _cost(x0, x1, couplings.ExactOTCoupling().source_indices(None, x0, x1))
    independent = _cost(x0, x1, jnp.arange(128))
    small = _cost(x0, x1, pair(couplings.SinkhornCoupling(0.005), k2))
    large = _cost(x0, x1, pair(couplings.SinkhornCoupling(10.0), k2))
    assert len(traces) == 1
    # Small epsilon: within 15 % of the optimal transport cost; large epsilon: near the independent cost.
    assert small < 1.15 * exact < independent
    assert large > 0.8 * independent


@pytest.mark.parametrize("case", COUPLABLE)
def test_given_source_at_t0_is_the_source_draw(case):
    path = case.make()
    x1 = jnp.array([0.7, -0.4])
    z0 = path.sample_source(jax.random.key(2), (2,))
    s = _given(path, jax.random.key(3), z0, x1, jnp.asarray(0.0))
    # Exact for the paths whose state at t = 0 is the source draw; VP/VE (alpha(0) x1) and VE-like HGF (x1 + z0)
    # carry the data offset their schedule keeps at t = 0 (the same allowance as the moment test).
    for a, b in zip(jax.tree_util.tree_leaves(s.z_t), jax.tree_util.tree_leaves(z0)):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 + case.t0_mean_atol
    s1 = _given(path, jax.random.key(3), z0, x1, jnp.asarray(1.0))
    np.testing.assert_allclose(np.asarray(path.readout(s1.z_t)), np.asarray(x1), atol=case.t1_atol)
    with pytest.raises(ValueError, match="shape"):
        path.sample_conditional_given_source(jax.random.key(3), jax.tree_util.tree_map(lambda a: a[:1], z0), x1,
                                             jnp.asarray(0.5))


@pytest.mark.parametrize("case", COUPLABLE)
def test_ot_coupled_loss_runs_under_jit_for_every_couplable_path(case):
    path = case.make()
    x1 = toy.eight_gaussians(jax.random.key(4), 32)
    apply = lambda params, z, t, cond=None, *, key=None: params * path.readout(z)
    loss = jax.jit(functools.partial(losses.flow_matching_loss, apply=apply, coupling=couplings.ExactOTCoupling()))
    value, _ = loss(jnp.asarray(0.5), jax.random.key(5), x1, path)
    assert np.isfinite(float(value))


def test_couplings_need_a_couplable_path_and_no_example_index():
    path = P.ReflectingBoxHGFPath(5.0, 1.0, 20.0)
    assert not isinstance(path, P.AbstractCouplablePath)
    apply = lambda params, z, t, cond=None, *, key=None: params * z
    x1 = jnp.zeros((8, 2))
    with pytest.raises(TypeError, match="AbstractCouplablePath"):
        losses.flow_matching_loss(jnp.asarray(1.0), jax.random.key(0), x1, path, apply=apply,
                                  coupling=couplings.ExactOTCoupling())
    with pytest.raises(ValueError, match="index"):
        losses.flow_matching_loss(jnp.asarray(1.0), jax.random.key(0), losses.Batch(x1, index=jnp.arange(8)),
                                  P.AffinePath(P.CondOT()), apply=apply, coupling=couplings.ExactOTCoupling())


@pytest.mark.parametrize("t", [0.25, 0.6, 0.9])
def test_kac_bridge_from_a_source_draw_has_the_kac_law(t):
    """z0 ~ source, then the bridge: z_t must have the law of the unconditional Kac path at t (exactness)."""
    n = 20_000
    path = P.KacPath(a=9.0, c=3.0)
    k0, k1, k2 = jax.random.split(jax.random.key(int(100 * t)), 3)
    x1 = jnp.zeros((n, 1))
    z0 = jax.vmap(lambda k: path.sample_source(k, (1,)))(jax.random.split(k0, n))
    bridge = _given_batch(path, jax.random.split(k1, n), z0, x1, jnp.full(n, t))
    direct = kac.sample(k2, path.kac_time(t), 9.0, 3.0, (n,))
    a, b = np.asarray(bridge.z_t[:, 0], np.float64), np.asarray(direct, np.float64)
    edge = 3.0 * float(path.kac_time(t))
    atoms_a, atoms_b = np.abs(a) >= edge * (1 - 1e-5), np.abs(b) >= edge * (1 - 1e-5)
    # Atom mass e^{-a s}: binomial, 5 SDs of a difference of two proportions.
    p = np.exp(-9.0 * float(path.kac_time(t)))
    assert abs(atoms_a.mean() - atoms_b.mean()) <= 5 * np.sqrt(2 * p * (1 - p) / n) + 1e-4
    # The continuous part: two-sample KS test (p-value above 1e-3; fails for a wrong bridge, see below).
    assert stats.ks_2samp(a[~atoms_a], b[~atoms_b]).pvalue > 1e-3
    # The bridge's velocity is +-c and its target the pathwise -T g' V.
    np.testing.assert_allclose(np.abs(np.asarray(bridge.target)), 3.0, rtol=1e-5)


def test_a_wrong_bridge_fails_the_law_test():
    """The KS test above has power: pairing the bridge with the wrong end value (y -> -y/2) is detected."""
    n = 20_000
    path = P.KacPath()
    k0, k1, k2 = jax.random.split(jax.random.key(9), 3)
    z0 = -0.5 * jax.vmap(lambda k: path.sample_source(k, (1,)))(jax.random.split(k0, n))
    bridge = _given_batch(path, jax.random.split(k1, n), z0,
                                                                     jnp.zeros((n, 1)), jnp.full(n, 0.3))
    direct = np.asarray(kac.sample(k2, path.kac_time(0.3), 9.0, 3.0, (n,)))
    assert stats.ks_2samp(np.asarray(bridge.z_t[:, 0]), direct).pvalue < 1e-6


@pytest.mark.parametrize("t", [0.2, 0.55, 0.9])
def test_kac_bridge_target_is_the_time_derivative_of_the_bridge(t):
    with jax.enable_x64(True):
        path = P.KacPath()
        x1 = jnp.array([0.7, -0.4, 0.1])
        z0 = path.sample_source(jax.random.key(10), (3,))
        key, h = jax.random.key(11), 1e-6
        draw = lambda s: _given(path, key, z0, x1, s)
        fd = (draw(jnp.asarray(t + h)).z_t - draw(jnp.asarray(t - h)).z_t) / (2 * h)
        np.testing.assert_allclose(np.asarray(draw(jnp.asarray(t)).target), np.asarray(fd), rtol=1e-6, atol=1e-6)


def _train_cond_ot(coupling, steps, hidden):
    model = models.MLP(2, 2, hidden=hidden, depth=3, rngs=nnx.Rngs(0))
    apply, params = models.as_apply(model)
    loss_fn = functools.partial(losses.flow_matching_loss, apply=apply, coupling=coupling)
    opt = training.make_optimizer(2e-3, total_steps=steps)
    state = training.init_train_state(jax.random.key(1), params, opt)
    loop = training.make_train_loop(loss_fn, opt, lambda k: toy.eight_gaussians(k, 256), steps_per_call=steps)
    state, _ = loop(state, P.AffinePath(P.CondOT()))
    return apply, state.params


def ot_straightening_figures(coupling, n=1000, steps=1200, hidden=128):
    """(per-trajectory straightness (n,), W2 of 1-step and 2-step Euler samples to fresh data) for one coupling."""
    path = P.AffinePath(P.CondOT())
    apply, params = _train_cond_ot(coupling, steps, hidden)
    fine = sampling.sample(jax.random.key(2), path, apply, params, n, (2,), num_steps=64, save_trajectory=65)
    traj, ts = fine.trajectory, fine.ts
    per = jax.vmap(lambda tr: metrics.straightness(tr[:, None], ts), in_axes=1)(traj)
    data = np.asarray(toy.eight_gaussians(jax.random.key(3), n))
    w2 = {k: metrics.wasserstein2(sampling.sample(jax.random.key(2), path, apply, params, n, (2,), num_steps=k)
                                  .samples, data) for k in (1, 2)}
    return np.asarray(per), w2


@pytest.mark.parametrize(
    "n, steps, hidden",
    [pytest.param(400, 300, 64, id="fast"), pytest.param(1000, 1200, 128, id="full", marks=pytest.mark.slow)],
)
def test_ot_coupling_straightens_cond_ot_on_eight_gaussians(n, steps, hidden):
    s_ind, w_ind = ot_straightening_figures(couplings.IndependentCoupling(), n, steps, hidden)
    s_ot, w_ot = ot_straightening_figures(couplings.ExactOTCoupling(), n, steps, hidden)
    print("independent", s_ind.mean(), w_ind, "exact OT", s_ot.mean(), w_ot)
    # Straightness: means over n trajectories; the gap must exceed 5 standard errors of the difference.
    se = np.sqrt(s_ind.var() / n + s_ot.var() / n)
    assert s_ind.mean() - s_ot.mean() > 5 * se
    # Low-NFE W2: the gap must exceed the sampling floor, W2 between two independent n-sets of the data.
    floor = metrics.wasserstein2(toy.eight_gaussians(jax.random.key(4), n), toy.eight_gaussians(jax.random.key(5), n))
    for k in (1, 2):
        assert w_ind[k] - w_ot[k] > floor, (k, w_ind[k], w_ot[k], floor)


def test_class_conditional_coupling_pairs_within_classes():
    """With class labels, every data row's source draw comes from its own class's share of the source draws
    (source i carries row i's label), for exact OT and Sinkhorn; the loss refuses non-label conditioning."""
    k0, k1, k2 = jax.random.split(jax.random.key(5), 3)
    x0, x1 = jax.random.normal(k0, (64, 2)), 3.0 + jax.random.normal(k1, (64, 2))
    groups = jax.random.randint(k2, (64,), 0, 4)
    for coupling in (couplings.ExactOTCoupling(), couplings.SinkhornCoupling(0.05)):
        idx = coupling.source_indices(jax.random.key(0), x0, x1, groups)
        np.testing.assert_array_equal(groups[idx], groups)
        assert len(np.unique(np.asarray(idx))) > 32  # a real assignment, not a constant
    apply, params = models.as_apply(models.MLP(2, 2, hidden=8, depth=1, time_features=4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="integer class labels"):
        losses.flow_matching_loss(params, jax.random.key(0), losses.Batch(x1, cond=x1), P.AffinePath(P.CondOT()),
                                  apply=apply, coupling=couplings.ExactOTCoupling())
