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

Capabilities are types, not methods that raise; callers test them with `isinstance`:

| abstract class | method | meaning |
|---|---|---|
| `AbstractCouplablePath` | `sample_conditional_given_source(key, z0, x1, t)` | a draw at t from a given source state |
| `AbstractSourceDensity` | `source_log_prob(z0)` | the log-density of the source law (exact likelihood) |
| `AbstractSignalToNoise` | `snr(t)`, `snr_inverse(snr)` | x_t = a(t) x1 + b(t) ε (Gaussian ε): SNR a/b, its inverse |

`z0` is a draw of `sample_source` (a state at t = 0), so a coupling of source draws and data rows (e.g. minibatch
optimal transport, `fm_jax.couplings`) can be applied before the path is sampled given both ends.

For a couplable path, `sample_conditional(key, x1, t)` has the law of `sample_conditional_given_source(k, z0, x1,
t)` with `z0` drawn from `sample_source` independently of `x1` (the independent coupling; tested).

Second-order (phase-space) paths carry a pytree state such as `(x, p)`; their model still predicts an array
shaped like the data, and `vector_field` turns it into the time derivative of the whole state.

Every method is either abstract or final: a subclass implements abstract methods and overrides nothing else.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp

from .._checks import check_scalar_time
from .._typing import Array, Float, Key, PyTree, Scalar, State
from .._util import scalar_derivative


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
    def sample_conditional(self, key: Key, x1: Float[Array, "*d"], t: Scalar) -> PathSample:
        """One draw `z_t` of the conditional path given data `x1: (*d)` at scalar `t`, and its target."""

    @abc.abstractmethod
    def vector_field(self, prediction: PyTree[Array], z: State, t: Scalar) -> State:
        """The time derivative of the state `z` driven by a model `prediction` (batched or not)."""

    @abc.abstractmethod
    def readout(self, z: State) -> Array:
        """The data-space position of a state."""


class AbstractCouplablePath(AbstractPath):
    """A path whose source is a law one can draw from and which can join a given source draw to the data.

    This is what minibatch couplings (`fm_jax.couplings`) need: draw `z0` from `sample_source`, pair source
    draws with data rows (e.g. by optimal transport), then sample the path given both ends.
    """

    @abc.abstractmethod
    def sample_conditional_given_source(
        self, key: Key, z0: State, x1: Float[Array, "*d"], t: Scalar
    ) -> PathSample:
        """One draw `z_t` at scalar `t` of the path from the source state `z0` (a draw of `sample_source`) to
        the data `x1: (*d)`, and the regression target.

        The target is a pathwise (or conditional-on-both-ends) velocity, so regressing on it under any coupling
        of (z0, x1) whose first marginal is the source law gives the marginal velocity of the coupled path.
        """


class AbstractSourceDensity(AbstractPath):
    """A path whose source law has a density (exact likelihood needs it)."""

    @abc.abstractmethod
    def source_log_prob(self, z0: State) -> Scalar:
        """Log-density of the source law at one state `z0`."""


class AbstractSignalToNoise(AbstractPath):
    """A path whose state is x_t = a(t) x1 + b(t) ε (ε ~ N(0, I) independent of the data), with its signal-to-noise
    ratio snr(t) = a(t) / b(t) increasing from 0 (or near it) at t = 0 to ∞ (or large) at t = 1.

    EDM's noise level is σ = 1 / snr: x_t / a(t) = x1 + σ ε (Karras et al. 2022, Eq. 4 with s(t) = a(t)), which
    maps noise-level grids such as EDM's ρ-schedule onto this path's time (`fm_jax.sampling.edm_time_grid`).
    """

    @abc.abstractmethod
    def snr(self, t: Scalar) -> Scalar:
        """a(t) / b(t) at scalar t."""

    @abc.abstractmethod
    def snr_inverse(self, snr: Scalar) -> Scalar:
        """The time t with snr(t) = `snr` (scalar)."""


class AbstractFirstOrderPath(AbstractPath):
    """A path whose state is the data-space point itself and whose target is the conditional velocity."""

    def vector_field(self, prediction: Array, z: Array, t: Scalar) -> Array:
        del z, t
        return prediction

    def readout(self, z: Array) -> Array:
        return z


class AbstractInterpolantPath(AbstractFirstOrderPath, AbstractCouplablePath):
    """A first-order path given by an interpolant `x_t = interpolate(x0, x1, t)` with `x0` a source draw.

    `x0` is exactly what `sample_source` returns (so any coupling of source draws and data applies). The target
    is `u_t = velocity(x0, x1, t) = d/dt interpolate(x0, x1, t)`: subclasses write it in closed form or return
    `interpolant_velocity(self, x0, x1, t)` (one forward-mode `jax.jvp`); the tests compare the two.
    """

    @abc.abstractmethod
    def interpolate(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        """The interpolant between a source draw `x0: (*d)` and data `x1: (*d)` at scalar `t`."""

    @abc.abstractmethod
    def velocity(self, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar) -> Float[Array, "*d"]:
        """The conditional velocity d/dt interpolate(x0, x1, t)."""

    def sample_conditional(self, key: Key, x1: Float[Array, "*d"], t: Scalar) -> PathSample:
        t = check_scalar_time(t)
        x0 = self.sample_source(key, jnp.shape(x1))
        return self.sample_conditional_given_source(key, x0, x1, t)

    def sample_conditional_given_source(
        self, key: Key, z0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar
    ) -> PathSample:
        del key  # the interpolant is deterministic given both ends
        t = check_scalar_time(t)
        if jnp.shape(z0) != jnp.shape(x1):
            raise ValueError(f"source draw z0 has shape {jnp.shape(z0)} but x1 has {jnp.shape(x1)}; they must match")
        x0 = jnp.asarray(z0).astype(jnp.result_type(x1, t))
        return PathSample(self.interpolate(x0, x1, t), self.velocity(x0, x1, t))


def interpolant_velocity(
    path: AbstractInterpolantPath, x0: Float[Array, "*d"], x1: Float[Array, "*d"], t: Scalar
) -> Float[Array, "*d"]:
    """d/dt of `path.interpolate(x0, x1, t)` by one forward-mode `jax.jvp`."""
    return scalar_derivative(lambda s: path.interpolate(x0, x1, s), t)
