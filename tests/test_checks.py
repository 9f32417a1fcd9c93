"""Checked mode: out-of-range and NaN times raise under jit and vmap when enabled, and pass silently by default."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax
from fm_jax import paths as P
from fm_jax._checks import check_finite, check_scalar_time

BAD_TIMES = [1.5, -0.25, float("nan")]


def _batched_sample(path):
    def run(t):
        keys = jax.random.split(jax.random.key(0), t.shape[0])
        return jax.vmap(path.sample_conditional)(keys, jnp.ones((t.shape[0], 2)), t)[0]

    return run


@pytest.mark.parametrize("bad", BAD_TIMES)
def test_checked_mode_raises_under_jit_and_vmap(bad):
    path = P.AffinePath(P.CondOT())
    t = jnp.array([0.2, bad, 0.7])
    with fm_jax.checks():
        assert fm_jax.checks_enabled()
        run = jax.jit(_batched_sample(path))  # traced (and compiled) inside checked mode
        with pytest.raises(Exception, match=r"t must lie in \[0, 1\]"):
            jax.block_until_ready(run(t))
        # Same compiled function, good values: runs (the check is in the program, not a retrace).
        assert np.all(np.isfinite(run(jnp.array([0.0, 0.5, 1.0]))))
        with pytest.raises(Exception, match=r"t must lie in \[0, 1\]"):
            jax.block_until_ready(jax.jit(lambda s: check_scalar_time(s) * 2.0)(jnp.asarray(bad)))
    assert not fm_jax.checks_enabled()


@pytest.mark.parametrize("bad", BAD_TIMES)
def test_default_mode_adds_no_traced_check_but_concrete_values_are_checked(bad):
    path = P.AffinePath(P.CondOT())
    out = jax.jit(_batched_sample(path))(jnp.array([0.2, bad, 0.7]))  # documented: unchecked by default
    assert out.shape == (3, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        path.sample_conditional(jax.random.key(0), jnp.ones(2), bad)


def test_checked_mode_finite_check_under_jit():
    with fm_jax.checks():
        f = jax.jit(lambda x: check_finite({"x": x}, "batch")["x"] + 1.0)
        np.testing.assert_allclose(f(jnp.ones(3)), 2.0)
        with pytest.raises(Exception, match="batch contains non-finite"):
            jax.block_until_ready(f(jnp.array([1.0, jnp.inf, 0.0])))
    with pytest.raises(ValueError, match="1 non-finite"):
        check_finite(np.array([1.0, np.nan]))


@pytest.mark.slow
def test_checked_mode_covers_every_path_under_jit_and_vmap():
    # Every registered path (Kac included: its sampler loop must not start on a bad t), ~1 min of compiles.
    from tests.all_paths import ALL_PATHS

    x1 = jnp.array([0.7, -0.4])
    keys = jax.random.split(jax.random.key(0), 2)
    with fm_jax.checks():
        for case in ALL_PATHS:
            path = case.make()
            f = jax.jit(jax.vmap(lambda k, t, path=path: path.sample_conditional(k, x1, t)))
            jax.block_until_ready(f(keys, jnp.array([0.3, 1.0])))
            for bad in (1.5, float("nan")):  # same compiled function, one bad element in the batch
                with pytest.raises(Exception, match=r"t must lie in \[0, 1\]"):
                    jax.block_until_ready(f(keys, jnp.array([0.3, bad])))
