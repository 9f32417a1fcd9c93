"""Contract tests run over every registered path (tests/all_paths.py): one list, every property."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_jax import paths as P
from tests.all_paths import ALL_PATHS

CASES = [pytest.param(c, id=c.name) for c in ALL_PATHS]
X1 = np.array([0.7, -0.4], np.float32)


def _draw(path, key, x1, t):
    return path.sample_conditional(key, x1, jnp.asarray(t, x1.dtype))


def _leaves_close(a, b, rtol, atol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", CASES)
def test_shapes_and_dtypes(case):
    path = case.make()
    s = _draw(path, jax.random.key(0), jnp.asarray(X1), 0.3)
    assert path.readout(s.z_t).shape == X1.shape
    for leaf in jax.tree_util.tree_leaves((s.z_t, s.target)):
        assert leaf.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(leaf)))
    z0 = path.sample_source(jax.random.key(1), X1.shape)
    assert path.readout(z0).shape == X1.shape
    # The state drawn at t and the source state share one structure (the sampler integrates from z0).
    assert jax.tree_util.tree_structure(z0) == jax.tree_util.tree_structure(s.z_t)
    with jax.enable_x64(True):
        path64 = case.make()
        s64 = _draw(path64, jax.random.key(0), jnp.asarray(X1, jnp.float64), 0.3)
        for leaf in jax.tree_util.tree_leaves((s64.z_t, s64.target)):
            assert leaf.dtype == jnp.float64


@pytest.mark.parametrize("case", CASES)
def test_same_key_same_output_and_jit_matches_eager(case):
    path = case.make()
    key = jax.random.key(3)
    a = _draw(path, key, jnp.asarray(X1), 0.6)
    b = _draw(path, key, jnp.asarray(X1), 0.6)
    _leaves_close(a, b, 0, 0)
    c = jax.jit(_draw)(path, key, jnp.asarray(X1), 0.6)
    _leaves_close(a, c, rtol=2e-5, atol=2e-5)
    c_other = _draw(path, jax.random.key(4), jnp.asarray(X1), 0.6)
    assert not np.allclose(np.asarray(path.readout(a.z_t)), np.asarray(path.readout(c_other.z_t)))


@pytest.mark.parametrize("case", CASES)
def test_vmap_matches_loop(case):
    path = case.make()
    keys = jax.random.split(jax.random.key(5), 4)
    x1 = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)), jnp.float32)
    ts = jnp.array([0.1, 0.4, 0.7, 0.95], jnp.float32)
    batched = jax.vmap(path.sample_conditional)(keys, x1, ts)
    for i in range(4):
        single = path.sample_conditional(keys[i], x1[i], ts[i])
        _leaves_close(jax.tree_util.tree_map(lambda a: a[i], batched), single, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case", CASES)
def test_t1_gives_the_data(case):
    path = case.make()
    keys = jax.random.split(jax.random.key(6), 256)
    x1 = jnp.broadcast_to(jnp.asarray(X1), (256, 2))
    s = jax.vmap(path.sample_conditional)(keys, x1, jnp.ones(256))
    np.testing.assert_allclose(np.asarray(jax.vmap(path.readout)(s.z_t)), np.asarray(x1), atol=case.t1_atol)


@pytest.mark.parametrize("case", CASES)
def test_t0_law_matches_source_by_moments(case):
    n = 20_000
    path = case.make()
    k1, k2 = jax.random.split(jax.random.key(7))
    x1 = jnp.broadcast_to(jnp.asarray(X1), (n, 2))
    zt = jax.vmap(path.sample_conditional)(jax.random.split(k1, n), x1, jnp.zeros(n)).z_t
    a = np.asarray(jax.vmap(path.readout)(zt), np.float64)
    b = np.asarray(jax.vmap(lambda k: path.readout(path.sample_source(k, (2,))))(jax.random.split(k2, n)), np.float64)
    sd = float(np.sqrt(0.5 * (a.var(0) + b.var(0))).max())
    # Means: 5 standard errors of a difference of two independent means, plus the schedule's known offset.
    np.testing.assert_allclose(a.mean(0), b.mean(0), atol=5 * sd * np.sqrt(2 / n) + case.t0_mean_atol)
    # Standard deviations: relative standard error of an SD ~ 1/sqrt(2n) (heavier tails: allow 8 of them).
    np.testing.assert_allclose(a.std(0), b.std(0), rtol=8 * np.sqrt(2 / (2 * n)) + 0.01 * case.t0_mean_atol)


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].pathwise_target])
@pytest.mark.parametrize("t", [0.2, 0.55, 0.9])
def test_target_is_time_derivative_of_the_path(case, t):
    """d/dt z_t (same key, central finite differences in float64) == vector_field(target, z_t, t)."""
    with jax.enable_x64(True):
        path = case.make()
        key = jax.random.key(8)
        x1 = jnp.asarray(X1, jnp.float64)
        h = 1e-5
        plus = _draw(path, key, x1, t + h).z_t
        minus = _draw(path, key, x1, t - h).z_t
        fd = jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * h), plus, minus)
        s = _draw(path, key, x1, t)
        field = path.vector_field(s.target, s.z_t, jnp.asarray(t))
        _leaves_close(field, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_no_retracing_when_hyper_parameters_change(case):
    traces = []

    @jax.jit
    def f(path, key, x1, t):
        traces.append(1)
        return path.sample_conditional(key, x1, t)

    for make in (case.make, case.make_other):
        jax.block_until_ready(f(make(), jax.random.key(0), jnp.asarray(X1), jnp.asarray(0.5)))
    assert len(traces) == 1, f"{case.name}: changing hyper-parameter values retraced the function"


@pytest.mark.parametrize("case", CASES)
def test_gradients_flow_through_the_target(case):
    path = case.make()

    def f(x1):
        s = path.sample_conditional(jax.random.key(9), x1, jnp.asarray(0.4))
        return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(s))

    g = jax.grad(f)(jnp.asarray(X1))
    assert g.shape == X1.shape and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("case", CASES)
def test_time_outside_unit_interval_is_rejected(case):
    path = case.make()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            path.sample_conditional(jax.random.key(0), jnp.asarray(X1), bad)
    with pytest.raises(ValueError, match="scalar"):
        path.sample_conditional(jax.random.key(0), jnp.asarray(X1), jnp.array([0.1, 0.2]))


@pytest.mark.parametrize("case", CASES)
def test_shape_annotations_hold_at_run_time(case):
    """The jaxtyping annotations of the path methods, checked by beartype on real calls (and violated on purpose)."""
    from beartype import beartype
    from jaxtyping import TypeCheckError, jaxtyped

    path = case.make()
    checked = lambda name: jaxtyped(typechecker=beartype)(getattr(type(path), name))
    x1, t, key = jnp.asarray(X1), jnp.asarray(0.3, jnp.float32), jax.random.key(0)
    checked("sample_conditional")(path, key, x1, t)
    checked("sample_source")(path, key, X1.shape)
    with pytest.raises(TypeCheckError):
        checked("sample_conditional")(path, key, jnp.asarray([1, 2], jnp.int32), t)  # x1 must be floating
    with pytest.raises(TypeCheckError):
        checked("sample_conditional")(path, key, x1, jnp.asarray([0.3], jnp.float32))  # t must be a scalar
    if isinstance(path, P.AbstractCouplablePath):
        z0 = path.sample_source(key, X1.shape)
        checked("sample_conditional_given_source")(path, key, z0, x1, t)
    if isinstance(path, P.AbstractInterpolantPath):
        with pytest.raises(TypeCheckError):  # x0 and x1 must share the shape *d
            checked("interpolate")(path, jnp.zeros(3), x1, t)


@pytest.mark.parametrize("case", CASES)
def test_capabilities_are_types_and_only_abstract_methods_are_overridden(case):
    """Abstract-or-final: every method a path class defines is abstract in one of its bases or new (no base
    defines it concretely); capabilities (source density, coupling) are declared by type."""
    import inspect

    path = case.make()
    cls = type(path)
    for klass in cls.__mro__:
        if klass in (object,) or not issubclass(klass, P.AbstractPath):
            continue
        for name, member in vars(klass).items():
            if name.startswith("__") or not callable(member):
                continue
            for base in klass.__mro__[1:]:
                if name in vars(base) and issubclass(base, P.AbstractPath):
                    assert getattr(vars(base)[name], "__isabstractmethod__", False), (
                        f"{klass.__name__}.{name} overrides the concrete {base.__name__}.{name}"
                    )
    assert hasattr(path, "source_log_prob") == isinstance(path, P.AbstractSourceDensity)
    assert hasattr(path, "sample_conditional_given_source") == isinstance(path, P.AbstractCouplablePath)
    assert not inspect.isabstract(cls)
