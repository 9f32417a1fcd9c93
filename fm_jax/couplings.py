"""Minibatch couplings of source draws and data rows (Tong et al. 2023, Pooladian et al. 2023).

A coupling looks at a batch of source draws z0 (B, ...) and data rows x1 (B, *d) and returns, for every data row
j, the index i_j of the source draw it is paired with. The loss then samples each path given both ends
(`AbstractCouplablePath.sample_conditional_given_source`). Data rows are never reordered or dropped, so
conditioning labels and per-example keys stay with their rows.

Costs are squared Euclidean distances between the data-space positions of the source draws
(`path.readout(z0)`, flattened) and the data rows, flattened.

| coupling | pairing |
|---|---|
| `IndependentCoupling()` | i_j = j (the draws are independent of the data: plain flow matching) |
| `ExactOTCoupling()` | the exact optimal assignment (a permutation; POT `ot.emd` via `jax.pure_callback`) |
| `SinkhornCoupling(epsilon)` | i_j drawn from column j of the entropic OT plan (ott-jax Sinkhorn) |
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._typing import Array, Float, Int, Key
from ._util import as_float_array


def squared_distances(x0: Float[Array, "B D"], x1: Float[Array, "B D"]) -> Float[Array, "B B"]:
    """C[i, j] = ||x0_i - x1_j||^2 (rows: source draws, columns: data rows)."""
    sq0 = jnp.sum(x0 * x0, axis=-1)
    sq1 = jnp.sum(x1 * x1, axis=-1)
    return jnp.maximum(sq0[:, None] + sq1[None, :] - 2.0 * x0 @ x1.T, 0.0)


def _within_groups(cost: Float[Array, "B B"], groups: Int[Array, " B"] | None) -> Float[Array, "B B"]:
    """The cost with every pairing across groups made prohibitive (class-conditional OT).

    Source draws are iid, so source i takes the group of data row i: each group gets exactly as many source draws
    as it has data rows. A cross-group pair costs more than all within-group pairs together, so the optimal
    assignment is block-diagonal, and an entropic plan puts mass e^(-penalty/ε) ≈ 0 across groups.
    """
    if groups is None:
        return cost
    penalty = cost.shape[0] * (jnp.max(cost) + 1.0)
    return jnp.where(groups[:, None] == groups[None, :], cost, cost + penalty)


class AbstractCoupling(eqx.Module):
    """A rule pairing a batch of source draws with a batch of data rows."""

    @abc.abstractmethod
    def source_indices(
        self, key: Key, x0: Float[Array, "B D"], x1: Float[Array, "B D"], groups: Int[Array, " B"] | None = None
    ) -> Int[Array, " B"]:
        """For each data row j the index i_j of its source draw; x0, x1 flattened positions (B, D).

        `groups` (B,): the data rows' class labels; pairs are then formed within each class only (class-conditional
        coupling), so each class's source law stays the source law the sampler draws from.
        """


class IndependentCoupling(AbstractCoupling):
    """Independent pairing (the default): source draw j goes with data row j."""

    def source_indices(self, key, x0, x1, groups=None):
        del key, x1, groups
        return jnp.arange(x0.shape[0])


def _emd_assignment(cost: np.ndarray) -> np.ndarray:
    import ot

    cost = np.asarray(cost, np.float64)
    n, m = cost.shape
    plan = ot.emd(np.full(n, 1.0 / n), np.full(m, 1.0 / m), cost)
    # With uniform weights and n = m the optimal plan is a permutation matrix / n (an extreme point).
    return np.argmax(plan, axis=0).astype(np.int32)


class ExactOTCoupling(AbstractCoupling):
    """The exact optimal assignment for the squared Euclidean cost (POT `ot.emd`, on the host).

    The solve runs on the host through `jax.pure_callback` (it works under `jit`; under `vmap` the batch elements
    are solved one after another). Cost O(B^3) in the worst case: batches up to a few thousand rows.
    """

    def source_indices(self, key, x0, x1, groups=None):
        del key
        cost = _within_groups(squared_distances(x0, x1), groups)
        out = jax.ShapeDtypeStruct((x1.shape[0],), jnp.int32)
        return jax.pure_callback(_emd_assignment, out, cost, vmap_method="sequential")


class SinkhornCoupling(AbstractCoupling):
    """Entropic OT (ott-jax Sinkhorn): i_j ~ P(i | j) = plan[i, j] / sum_i plan[i, j].

    Args:
        epsilon: entropic regularisation relative to the mean cost of the batch (the cost is divided by its mean
            before solving), so one value suits any data scale; small epsilon approaches `ExactOTCoupling`, large
            epsilon the independent coupling. An array leaf: changing it does not recompile.
        max_iterations: static cap on Sinkhorn iterations.
    """

    epsilon: Array = eqx.field(converter=as_float_array, default=0.05)
    max_iterations: int = eqx.field(static=True, default=2000)

    def source_indices(self, key, x0, x1, groups=None):
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn

        cost = squared_distances(x0, x1)
        cost = _within_groups(cost / jnp.maximum(jnp.mean(cost), jnp.finfo(cost.dtype).tiny), groups)
        geom = geometry.Geometry(cost_matrix=cost, epsilon=self.epsilon)
        out = sinkhorn.Sinkhorn(max_iterations=self.max_iterations)(linear_problem.LinearProblem(geom))
        plan = out.matrix
        logits = jnp.log(jnp.maximum(plan, jnp.finfo(plan.dtype).tiny)).T  # (data rows, source draws)
        return jax.random.categorical(key, logits, axis=-1)


__all__ = ["AbstractCoupling", "ExactOTCoupling", "IndependentCoupling", "SinkhornCoupling", "squared_distances"]
