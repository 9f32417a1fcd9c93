"""The path protocol every probability path implements.

Time convention: t in [0, 1], t = 0 is the source (noise or prior), t = 1 is the data. Path functions see a
single example (`x1` of shape `(*d)`, scalar `t`); batch with `jax.vmap` at the call site. Hyper-parameters are
array-valued pytree fields, so one compiled function serves every value.

A path is a frozen `equinox.Module`:

| method | meaning |
|---|---|
| `sample_source(key, shape) -> z0` | a draw of the source law at t = 0 for data of shape `shape` |
| `sample_conditional(key, x1, t) -> PathSample` | a conditional draw at t given `x1`, and the target |
| `vector_field(prediction, z, t) -> dz/dt` | how a model prediction drives the state (identity for first-order paths) |
| `readout(z) -> x` | the data-space position of a state (identity for first-order paths) |

Second-order (phase-space) paths carry a pytree state such as `(x, p)`; their model still predicts an array
shaped like the data, and `vector_field` turns it into the time derivative of the whole state.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_scalar_time
from .._typing import Array, Key, PyTree, Scalar, State


class PathSample(NamedTuple):
    """A draw of a conditional path: the state `z_t` (array or pytree) and the regression `target`."""

    z_t: State
    target: PyTree[Array]


class AbstractPath(eqx.Module):
    """A probability path from a source law (t = 0) to the data (t = 1)."""

    @abc.abstractmethod
    def sample_source(self, key: Key, shape: tuple[int, ...]) -> State:
        """One draw of the source law at t = 0 for data of shape `shape`."""

    @abc.abstractmethod
    def sample_conditional(self, key: Key, x1: Array, t: Scalar) -> PathSample:
        """One draw `z_t` of the conditional path given data `x1: (*d)` at scalar `t`, and its target."""

    @abc.abstractmethod
    def vector_field(self, prediction: PyTree[Array], z: State, t: Scalar) -> State:
        """The time derivative of the state `z` driven by a model `prediction` (batched or not)."""

    @abc.abstractmethod
    def readout(self, z: State) -> Array:
        """The data-space position of a state."""

    def source_log_prob(self, z0: State) -> Scalar:
        """Log-density of the source law at one state `z0` (only for sources with a density)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no source density; exact likelihood needs a path with a Gaussian (or "
            "otherwise absolutely continuous) source"
        )


class AbstractFirstOrderPath(AbstractPath):
    """A path whose state is the data-space point itself and whose target is the conditional velocity."""

    def vector_field(self, prediction: Array, z: Array, t: Scalar) -> Array:
        del z, t
        return prediction

    def readout(self, z: Array) -> Array:
        return z


class AbstractInterpolantPath(AbstractFirstOrderPath):
    """A first-order path given by an interpolant `x_t = interpolate(x0, x1, t)` with `x0` from the source.

    The target is `u_t = d/dt interpolate(x0, x1, t)`, computed by `jax.jvp` (forward mode: one extra
    evaluation); subclasses may override `velocity` with a cheaper closed form, which the tests compare with
    the jvp.
    """

    @abc.abstractmethod
    def interpolate(self, x0: Array, x1: Array, t: Scalar) -> Array:
        """The interpolant between a source draw `x0: (*d)` and data `x1: (*d)` at scalar `t`."""

    def velocity(self, x0: Array, x1: Array, t: Scalar) -> Array:
        """The conditional velocity d/dt interpolate(x0, x1, t) (by `jax.jvp` unless overridden)."""
        return interpolant_velocity(self, x0, x1, t)

    def sample_conditional(self, key: Key, x1: Array, t: Scalar) -> PathSample:
        t = check_scalar_time(t)
        x0 = self.sample_source(key, jnp.shape(x1))
        x0 = x0.astype(jnp.result_type(x1, t))
        return PathSample(self.interpolate(x0, x1, t), self.velocity(x0, x1, t))


def interpolant_velocity(path: AbstractInterpolantPath, x0: Array, x1: Array, t: Scalar) -> Array:
    """d/dt of `path.interpolate(x0, x1, t)` by one forward-mode `jax.jvp`."""
    t = jnp.asarray(t)
    _, dxdt = jax.jvp(lambda s: path.interpolate(x0, x1, s), (t,), (jnp.ones_like(t),))
    return dxdt
