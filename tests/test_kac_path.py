"""Tests of `fm_jax.paths.KacPath`, its signal schedules and clocks, and the CIFAR-10 Kac configuration.

The contract tests (tests/test_paths_contract.py) cover shapes, determinism, jit/vmap and retracing; here: the
laws at t = 0 and t, the target formula of papers.md §7 item 11 in our time, the product structure, and a flow
test (Euler on the exact 1-D velocity field transports Law(K_T) to Law(K_s)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import registry
from experiments.configs import cifar10_kac
from fm_jax import kac
from fm_jax import paths as P

SIGNALS = [P.LinearSignal(), P.CosineSignal(), P.ExponentialSignal(2.0)]
CLOCKS = [P.IdentityClock(), P.QuadraticClock()]


@pytest.mark.parametrize("schedule", SIGNALS + CLOCKS, ids=lambda m: type(m).__name__)
def test_schedule_derivatives_match_jvp_and_boundary_values(schedule):
    T = jnp.float32(1.7)
    s = jnp.linspace(0.0, 1.7, 11)
    if isinstance(schedule, P.AbstractKacSignal):
        fn, closed = schedule.f, schedule.df
        default = jax.vmap(lambda u: P.AbstractKacSignal.df(schedule, u, T))(s)
        np.testing.assert_allclose(float(fn(0.0, T)), 1.0, atol=1e-7)
        if not isinstance(schedule, P.ExponentialSignal):
            np.testing.assert_allclose(float(fn(T, T)), 0.0, atol=1e-6)
    else:
        fn, closed = schedule.g, schedule.dg
        default = jax.vmap(lambda u: P.AbstractKacClock.dg(schedule, u, T))(s)
        np.testing.assert_allclose(float(fn(0.0, T)), 0.0, atol=0)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(lambda u: closed(u, T))(s)), np.asarray(default), rtol=1e-6, atol=1e-6
    )


def test_time_map_and_defaults():
    path = P.KacPath()
    assert float(path.a) == 9.0 and float(path.c) == 3.0 and float(path.T) == 1.0
    np.testing.assert_allclose(float(path.kac_time(0.0)), 1.0)
    np.testing.assert_allclose(float(path.kac_time(1.0)), 0.0)
    # Hyper-parameters are pytree leaves (arrays), schedules are sub-modules.
    leaves = jax.tree_util.tree_leaves(P.KacPath(a=25.0, c=2.0, T=2.0, signal=P.ExponentialSignal(3.0)))
    assert sorted(float(v) for v in leaves) == [2.0, 2.0, 3.0, 25.0]


@pytest.mark.parametrize("kwargs, match", [(dict(a=0.0), "a"), (dict(c=-1.0), "c"), (dict(T=0.0), "T")])
def test_bad_hyper_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.KacPath(**kwargs)
    with pytest.raises(ValueError, match="rate"):
        P.ExponentialSignal(-1.0)


N = 20_000


@pytest.mark.parametrize(
    "path", [P.KacPath(), P.KacPath(a=25.0, c=2.0, T=1.5, clock=P.QuadraticClock())], ids=["default", "a25c2_quadratic"]
)
def test_source_is_the_product_kac_law(path):
    z0 = np.asarray(path.sample_source(jax.random.key(0), (N, 2)), np.float64)
    g_T = float(path.clock.g(path.T, path.T))
    var = float(kac.variance(g_T, path.a, path.c))
    cs = float(path.c) * g_T
    # |K| <= cs bounds the fourth moment: SD of the variance estimate <= sqrt((cs^2 var - var^2) / n).
    np.testing.assert_allclose(z0.var(0), var, atol=5 * np.sqrt((cs**2 * var - var**2) / N))
    np.testing.assert_allclose(z0.mean(0), 0.0, atol=5 * np.sqrt(var / N))
    # Coordinates are independent: correlation within 5 / sqrt(n).
    assert abs(np.corrcoef(z0.T)[0, 1]) < 5 / np.sqrt(N)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.8, 1.0])
def test_conditional_law_and_target_formula(t):
    """z_t = f(s) x1 + K_{g(s)}; target = -T [f'(s) x1 + g'(s) v(g(s), z - f x1)] with s = T (1 - t) (item 11)."""
    path = P.KacPath(a=9.0, c=3.0, T=1.0, signal=P.CosineSignal(), clock=P.QuadraticClock())
    x1 = jnp.broadcast_to(jnp.array([0.7, -0.4, 1.3], jnp.float32), (N, 3))
    keys = jax.random.split(jax.random.key(1), N)
    ts = jnp.full((N,), t, jnp.float32)
    sample = jax.vmap(path.sample_conditional)(keys, x1, ts)
    z, target = np.asarray(sample.z_t, np.float64), np.asarray(sample.target, np.float64)
    s = 1.0 - t
    f, df = np.cos(np.pi * s / 2), -np.pi / 2 * np.sin(np.pi * s / 2)
    g, dg = s**2, 2 * s
    var = float(kac.variance(np.float32(g), 9.0, 3.0))
    np.testing.assert_allclose(z.mean(0), f * np.asarray(x1[0]), atol=5 * np.sqrt(var / N) + 1e-6)
    np.testing.assert_allclose(z.var(0), var, atol=5 * np.sqrt((9 * g * g * var - var**2) / N) + 1e-12)
    k = z - f * np.asarray(x1)
    # Away from the atoms, z - f x1 recovers K up to float32 rounding and the formula holds coordinate-wise.
    interior = np.abs(k) < 3.0 * g * (1 - 1e-3)
    v = np.asarray(kac.velocity(np.float32(g), k.astype(np.float32), 9.0, 3.0), np.float64)
    expected = -(df * np.asarray(x1) + dg * v)
    np.testing.assert_allclose(target[interior], expected[interior], rtol=1e-4, atol=1e-4)
    # On the atoms the Kac velocity is exactly +-c.
    atoms = (np.abs(k) >= 3.0 * g * (1 - 1e-6)) & (g > 0)  # draws within 1e-3 of the cone are skipped
    np.testing.assert_allclose(
        target[atoms], -(df * np.asarray(x1) + dg * 3.0 * np.sign(k))[atoms], rtol=1e-5, atol=1e-5
    )
    # conditional_velocity(z, x1, t) is the same function of the state.
    cv = jax.vmap(path.conditional_velocity, in_axes=(0, 0, None))(sample.z_t, x1, jnp.float32(t))
    np.testing.assert_allclose(np.asarray(cv)[interior], target[interior], rtol=1e-4, atol=1e-4)


def test_product_structure_and_speed_bound():
    """Item 11: each coordinate of the target uses the 1-D velocity of that coordinate; ||v|| <= sqrt(d) c."""
    path = P.KacPath()
    d = 6
    x1 = jnp.zeros((d,))  # f' x1 = 0: the target is -T g' v, with g' = 1
    for i, t in enumerate(np.linspace(0.0, 0.95, 12)):
        t32 = jnp.float32(t)
        sample = path.sample_conditional(jax.random.key(i), x1, t32)
        s = path.kac_time(t32)  # the same float32 clock as the path (atoms sit at fl(c s))
        per_coord = [float(kac.velocity(s, sample.z_t[j], 9.0, 3.0)) for j in range(d)]
        np.testing.assert_allclose(np.asarray(sample.target), -np.asarray(per_coord), rtol=1e-6, atol=1e-7)
        assert float(jnp.linalg.norm(sample.target)) <= np.sqrt(d) * 3.0 + 1e-5


def test_exact_velocity_field_transports_the_prior_back_along_the_kac_law():
    """Continuity at the level of the flow: Euler steps of dz/dt = target(z, t) (data x1 = 0, exact field) from
    the Kac prior at t = 0 reach Law(K_s) at t = 1/2 (s = 1/2): atom mass and variance match."""
    path = P.KacPath()
    z = path.sample_source(jax.random.key(3), (N,))
    zeros = jnp.zeros_like(z)
    steps = 200
    dt = 0.5 / steps

    def step(z, i):
        t = i * dt
        return z + dt * path.conditional_velocity(z, zeros, t), None

    z, _ = jax.lax.scan(step, z, jnp.arange(steps, dtype=jnp.float32))
    z = np.asarray(z, np.float64)
    # Backwards in s the cone |x| = c s shrinks at speed c while interior points move slower (|v| < c), so the
    # flow sweeps continuous mass onto the cone, where the field is +-c: the atom mass grows from e^{-9} to
    # e^{-4.5} (item 8 read backwards). Euler leaves absorbed points within one step (c dt T) of the cone.
    on_cone = np.abs(z) >= 1.5 - 3.0 * dt
    p_atom = np.exp(-4.5)
    assert abs(on_cone.mean() - p_atom) < 5 * np.sqrt(p_atom / N) + 0.1 * p_atom, on_cone.mean()
    var = float(kac.variance(0.5, 9.0, 3.0))
    # Monte Carlo: 5 standard errors (|z| <= 1.5 bounds the fourth moment); Euler's bias is below 1 %.
    tol = 5 * np.sqrt((1.5**2 * var - var**2) / N) + 0.01 * var
    assert abs(z.var() - var) < tol, (z.var(), var)
    assert np.all(np.abs(z) <= 1.5 + 3.0 * dt)


@pytest.mark.parametrize("variant, a, c", [(None, 9.0, 3.0), ("a9_c3", 9.0, 3.0), ("a25_c2", 25.0, 2.0)])
def test_cifar10_config_matches_the_registered_path(variant, a, c):
    config = cifar10_kac.get_config(variant)
    path = registry.get_path(config.path.name, **config.path.kwargs)
    assert isinstance(path, P.KacPath) and isinstance(path.signal, P.LinearSignal)
    assert isinstance(path.clock, P.IdentityClock)
    assert (float(path.a), float(path.c), float(path.T)) == (a, c, 1.0)
    assert config.eval.solver == "euler" and config.eval.step_counts == (100,) and config.dataset.name == "cifar10"
    with pytest.raises(ValueError, match="variant"):
        cifar10_kac.get_config("a1_c1")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "path", [P.KacPath(), P.KacPath(a=25.0, c=2.0, signal=P.CosineSignal(), clock=P.QuadraticClock())],
    ids=["default", "cosine-quadratic"],
)
def test_conditional_velocity_keeps_atoms_exact(path, dtype):
    # z = f x1 + K rounded; recomputing z - f x1 must not move an atom inside the cone (speed 0.55 c instead of c).
    with jax.enable_x64(dtype == jnp.float64):
        t = jnp.asarray(0.95, dtype)
        x1 = jax.random.normal(jax.random.key(0), (5_000,), dtype) * 3.0
        key = jax.random.key(1)
        sample = path.sample_conditional(key, x1, t)
        s = path.kac_time(t)
        noise = kac.sample(key, path.clock.g(s, path.T), path.a, path.c, x1.shape).astype(dtype)
        atoms = np.asarray(jnp.abs(noise) == path.c * path.clock.g(s, path.T))
        assert 0.3 < atoms.mean() < 0.99  # atom mass e^{-a g} (0.64 and 0.94 here): most coordinates are atoms
        u = np.asarray(path.conditional_velocity(sample.z_t, x1, t))
        target = np.asarray(sample.target)
        # On the atoms the two agree to rounding of -T (f' x1 + g' c sign): relative 1e-5 of T c (float32).
        scale = float(path.T * path.c) * (1e-5 if dtype == jnp.float32 else 1e-12)
        np.testing.assert_allclose(u[atoms], target[atoms], rtol=0, atol=scale * (1 + np.abs(x1[atoms]).max()))
