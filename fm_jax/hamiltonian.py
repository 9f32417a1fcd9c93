"""Hamiltonian dynamics for generative flows and score matching (Holderrieth, Xu, Jaakkola, NeurIPS 2024).

Everything here runs on the paper's clock tau >= 0 and uses the paper's names: `x0` is the position at tau = 0
(a data point), `v0` the initial velocity, and the parameterised Hamiltonian ODE (PH-ODE) is

    dx/dtau = v,        dv/dtau = F(x, tau),        (x0, v0) ~ pi (x) N(0, sigma_v^2 I).

The paths in `fm_jax.paths.hamiltonian` map this clock onto the library's t in [0, 1] (data at t = 1).

Contents:
- `oscillation_state`: the closed form of the harmonic force F = -alpha^2 x,
      x_tau = cos(alpha tau) x0 + sin(alpha tau) v0 / alpha,   v_tau = -alpha sin(alpha tau) x0 + cos(alpha tau) v0.
- Conversions between the Hamiltonian velocity predictor (HVP) phi_tau(x) = E[v_tau | x_tau = x], the denoiser
  D(x, tau) = E[x0 | x_tau = x] and the score grad log p_tau(x), for the zero-force flow (x_tau = x0 + tau v0:
  phi = (x - D)/tau = -sigma_v^2 tau grad log p_tau) and the oscillation flow
  (phi = alpha (cos(alpha tau) x - D) / sin(alpha tau)).
- `VelocityVerlet`: a symplectic, time-reversible, second-order Diffrax solver for (dx = v dtau, dv = F dtau), and
  `hamiltonian_flow`, which drives it for any force field.
- The Hamiltonian score discrepancy HSD_T(F) = int_0^T E || E[v_tau | x_tau] ||^2 dtau, estimated exactly (up to
  Monte Carlo error) for a known density by Liouville's theorem and importance sampling; its small-T form
  (T^3/3) E_pi || F - sigma_v^2 grad log pi ||^2; and its closed form for Gaussian data with a linear force.

Derivations (papers.md §3): with F = sigma_v^2 grad log pi the law pi (x) N(0, sigma_v^2 I) is invariant, so
E[v_tau | x_tau] = 0 for every tau. For small tau, x_tau ~ x0 + tau v0 and v_tau ~ v0 + tau F(x0), whence
E[v_tau | x_tau = x] = tau (F(x) - sigma_v^2 grad log pi(x)) + O(tau^2) and HSD_T = (T^3/3) E||F - sigma_v^2
grad log pi||^2 + O(T^4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import is_concrete
from ._typing import Array, Key, Scalar

Force = Callable[[Array, Scalar], Array]


def _check_alpha(alpha, allow_zero: bool) -> None:
    if is_concrete(alpha):
        a = np.asarray(alpha)
        bad = ~np.isfinite(a) | (a < 0) | ((a == 0) & (not allow_zero))
        if np.any(bad):
            need = "non-negative" if allow_zero else "positive"
            raise ValueError(f"alpha (the oscillation frequency) must be {need} and finite, got {a.tolist()}")


# ---------------------------------------------------------------------------------------------------------------
# Closed forms and prediction conversions
# ---------------------------------------------------------------------------------------------------------------


def _sin_over_alpha(alpha, tau):
    # sin(alpha tau) / alpha = tau sin(z)/z with z = alpha tau, smooth at alpha = 0 (the zero-force limit). The
    # series branch (error z^6/5040) avoids 0/0 and keeps every derivative finite for tiny z (jnp.sinc does not).
    z = alpha * tau
    small = jnp.abs(z) < 1e-2
    z_safe = jnp.where(small, 1.0, z)
    ratio = jnp.where(small, 1.0 - z**2 / 6.0 + z**4 / 120.0, jnp.sin(z_safe) / z_safe)
    return tau * ratio


def oscillation_state(x0: Array, v0: Array, tau: Scalar, alpha: Scalar) -> tuple[Array, Array]:
    """Phase-space state of the harmonic PH-ODE dx/dtau = v, dv/dtau = -alpha^2 x at time tau.

    x_tau = cos(alpha tau) x0 + sin(alpha tau)/alpha v0,   v_tau = -alpha sin(alpha tau) x0 + cos(alpha tau) v0
    (papers.md §3.5). alpha = 0 is allowed and gives the zero-force flow x0 + tau v0, v0 (sin(a tau)/a is
    evaluated as tau sinc(a tau / pi)). The energy alpha^2 |x|^2 + |v|^2 is conserved; x at tau = pi/(2 alpha) is
    v0 / alpha.

    Args:
        x0: initial position (*d) (the data point). v0: initial velocity (*d).
        tau: time () (any real; the paths use [0, pi/(2 alpha)]). alpha: frequency () >= 0.
    Returns:
        (x_tau, v_tau), each (*d).
    """
    _check_alpha(alpha, allow_zero=True)
    alpha = jnp.asarray(alpha)
    c = jnp.cos(alpha * tau)
    s_over_a = _sin_over_alpha(alpha, tau)
    x = c * x0 + s_over_a * v0
    v = -(alpha**2) * s_over_a * x0 + c * v0
    return x, v


def zero_force_velocity_to_denoiser(v: Array, x: Array, tau: Scalar) -> Array:
    """Denoiser D = E[x0 | x_tau = x] from the zero-force HVP: D = x - tau phi (x_tau = x0 + tau v0)."""
    return x - tau * v


def zero_force_denoiser_to_velocity(d: Array, x: Array, tau: Scalar) -> Array:
    """Zero-force HVP phi = E[v_tau | x_tau = x] = (x - D) / tau (papers.md §7 item 15); tau > 0."""
    return (x - d) / tau


def zero_force_velocity_to_score(v: Array, x: Array, tau: Scalar, sigma_v: Scalar = 1.0) -> Array:
    """Score of p_tau = pi * N(0, sigma_v^2 tau^2 I) from the zero-force HVP: grad log p_tau = -phi / (sigma_v^2 tau).

    From Tweedie, grad log p_tau(x) = (D - x) / (sigma_v tau)^2 and phi = (x - D) / tau. Args as in the
    denoiser conversions; tau > 0.
    """
    del x
    return -v / (sigma_v**2 * tau)


def zero_force_score_to_velocity(score: Array, x: Array, tau: Scalar, sigma_v: Scalar = 1.0) -> Array:
    """Zero-force HVP from the score of p_tau: phi = -sigma_v^2 tau grad log p_tau(x) (the EDM probability flow)."""
    del x
    return -(sigma_v**2) * tau * score


def oscillation_velocity_to_denoiser(v: Array, x: Array, tau: Scalar, alpha: Scalar) -> Array:
    """Denoiser from the oscillation HVP: D = cos(alpha tau) x - sin(alpha tau) phi / alpha.

    Inverts phi = alpha (cos(alpha tau) x - D) / sin(alpha tau). Valid for every tau (no division).
    Args: v = phi (*d), x (*d), tau (), alpha () > 0. Returns (*d).
    """
    return jnp.cos(alpha * tau) * x - _sin_over_alpha(alpha, tau) * v


def oscillation_denoiser_to_velocity(d: Array, x: Array, tau: Scalar, alpha: Scalar) -> Array:
    """Oscillation HVP from the denoiser: phi = alpha (cos(alpha tau) x - D) / sin(alpha tau) (papers.md §3.5).

    Singular at tau = 0 (where phi = E[v0 | x0] carries no information about x); 0 < tau <= pi/(2 alpha).
    """
    return (jnp.cos(alpha * tau) * x - d) / _sin_over_alpha(alpha, tau)


def oscillation_velocity_to_score(v: Array, x: Array, tau: Scalar, alpha: Scalar, sigma_v: Scalar = 1.0) -> Array:
    """Score of p_tau from the oscillation HVP: grad log p_tau = (cos(a tau) D - x) / (sigma_v sin(a tau)/a)^2.

    x_tau = c x0 + (s/alpha) v0 is x0 scaled by c = cos(alpha tau) plus N(0, (sigma_v s/alpha)^2 I) noise, so
    Tweedie gives the formula with D = c x - (s/alpha) phi from `oscillation_velocity_to_denoiser`; equivalently
    grad log p_tau = -(alpha/sigma_v)^2 (x + c phi / (alpha s)). Singular at tau = 0. Returns (*d).
    """
    d = oscillation_velocity_to_denoiser(v, x, tau, alpha)
    return oscillation_denoiser_to_score(d, x, tau, alpha, sigma_v)


def oscillation_score_to_velocity(score: Array, x: Array, tau: Scalar, alpha: Scalar, sigma_v: Scalar = 1.0) -> Array:
    """Oscillation HVP from the score: phi = -(sin(a tau)/cos(a tau)) (alpha x + sigma_v^2 grad log p_tau / alpha).

    The inverse of `oscillation_velocity_to_score`; singular at tau = pi/(2 alpha), where x_tau carries no
    information on x0 and phi = -alpha E[x0].
    """
    c = jnp.cos(alpha * tau)
    s = jnp.sin(alpha * tau)
    return -(s / c) * (alpha * x + sigma_v**2 * score / alpha)


def oscillation_denoiser_to_score(d: Array, x: Array, tau: Scalar, alpha: Scalar, sigma_v: Scalar = 1.0) -> Array:
    """Tweedie for the oscillation flow: grad log p_tau(x) = (cos(a tau) D - x) / (sigma_v sin(a tau)/alpha)^2."""
    s_a = _sin_over_alpha(alpha, tau)
    return (jnp.cos(alpha * tau) * d - x) / (sigma_v * s_a) ** 2


# ---------------------------------------------------------------------------------------------------------------
# Symplectic integration
# ---------------------------------------------------------------------------------------------------------------


class VelocityVerlet(diffrax.AbstractSolver):
    """Velocity Verlet (kick-drift-kick leapfrog) for the split system dx = f(v) dt, dv = g(x, t) dt.

    One step of size h:  v' = v + (h/2) g(x, t0);  x1 = x + h f(v');  v1 = v' + (h/2) g(x1, t1).
    Symplectic, time-reversible (a step of -h undoes a step of h for an autonomous g), second order, one new force
    evaluation per step (the last one is carried in the solver state). Terms are a pair `(term_x, term_v)` as for
    `diffrax.SemiImplicitEuler`: `term_x.vf(t, v, args)` and `term_v.vf(t, x, args)`. Constant step sizes only.
    """

    term_structure: ClassVar = (diffrax.AbstractTerm, diffrax.AbstractTerm)
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms):
        del terms
        return 2

    def init(self, terms, t0, t1, y0, args):
        del t1
        _, term_v = terms
        return term_v.vf(t0, y0[0], args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        term_x, term_v = terms
        x0, v0 = y0
        g0 = solver_state
        control_v = term_v.contr(t0, t1)
        half = jax.tree_util.tree_map(lambda c: 0.5 * c, control_v)
        v_half = jax.tree_util.tree_map(jnp.add, v0, term_v.prod(g0, half))
        x1 = jax.tree_util.tree_map(jnp.add, x0, term_x.vf_prod(t0, v_half, args, term_x.contr(t0, t1)))
        g1 = term_v.vf(t1, x1, args)
        v1 = jax.tree_util.tree_map(jnp.add, v_half, term_v.prod(g1, half))
        y1 = (x1, v1)
        return y1, None, dict(y0=y0, y1=y1), g1, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        term_x, term_v = terms
        return term_x.vf(t0, y0[1], args), term_v.vf(t0, y0[0], args)


def hamiltonian_flow(
    force: Force,
    x0: Array,
    v0: Array,
    tau: Scalar,
    *,
    n_steps: int = 32,
    solver: diffrax.AbstractSolver | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    trajectory: bool = False,
) -> tuple[Array, Array]:
    """Integrate the PH-ODE dx/dtau = v, dv/dtau = F(x, tau) from (x0, v0) over [0, tau] with `n_steps` steps.

    Diffrax drives `solver` (default `VelocityVerlet()`) over the normalised clock s in [0, 1], on which the system
    reads dx/ds = tau v, dv/ds = tau F(x, tau s): this is the same scheme with step h = tau / n_steps, and it
    lets tau be a traced (even batched, under vmap) value, zero, or negative (a negative tau integrates backwards;
    for an autonomous force Verlet retraces its forward steps exactly).

    Args:
        force: `force(x, tau) -> (*d)` for one example (ignore `tau` for an autonomous force).
        x0, v0: initial position and velocity (*d). tau: () the end time.
        n_steps: static number of steps. solver: a Diffrax solver taking the term pair `(term_x, term_v)`.
        adjoint: Diffrax adjoint; the default `RecursiveCheckpointAdjoint(checkpoints=n_steps)` (every step
            stored: fastest to compile and run for the few steps used here) supports reverse-mode gradients,
            `diffrax.DirectAdjoint()` supports `jax.jvp` and reverse mode together (the path uses it).
        trajectory: if True return the states after every step, shapes (n_steps, *d), instead of the final state.
    Returns:
        (x_tau, v_tau), each (*d) (or (n_steps, *d) with `trajectory=True`).
    """
    solver = VelocityVerlet() if solver is None else solver
    adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=n_steps) if adjoint is None else adjoint
    tau = jnp.asarray(tau, dtype=jnp.result_type(x0))
    term_x = diffrax.ODETerm(lambda s, v, tau_: tau_ * v)
    term_v = diffrax.ODETerm(lambda s, x, tau_: tau_ * force(x, tau_ * s))
    saveat = diffrax.SaveAt(steps=True) if trajectory else diffrax.SaveAt(t1=True)
    sol = diffrax.diffeqsolve(
        (term_x, term_v),
        solver,
        t0=0.0,
        t1=1.0,
        dt0=1.0 / n_steps,
        y0=(x0, v0),
        args=tau,
        saveat=saveat,
        stepsize_controller=diffrax.ConstantStepSize(),
        adjoint=adjoint,
        max_steps=n_steps,
    )
    x, v = sol.ys
    if trajectory:
        return x, v
    return x[0], v[0]


class HarmonicForce(eqx.Module):
    """The oscillation force F(x) = -alpha^2 x (a pytree: alpha is an array leaf)."""

    alpha: Array = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        _check_alpha(self.alpha, allow_zero=True)

    def __call__(self, x: Array, tau: Scalar) -> Array:
        del tau
        return -(self.alpha**2) * x


class ScoreForce(eqx.Module):
    """The HMC force F(x) = scale * grad log_density(x) (by autodiff); `log_density(x) -> ()` is a static function."""

    log_density: Callable[[Array], Scalar] = eqx.field(static=True)
    scale: Array = eqx.field(converter=jnp.asarray, default=1.0)

    def __call__(self, x: Array, tau: Scalar) -> Array:
        del tau
        return self.scale * jax.grad(self.log_density)(x)


# ---------------------------------------------------------------------------------------------------------------
# Hamiltonian score discrepancy
# ---------------------------------------------------------------------------------------------------------------


def _gauss_normal_logpdf(v, sigma_v):
    return -0.5 * jnp.sum((v / sigma_v) ** 2)


def hamiltonian_velocity_posterior(
    key: Key,
    force: Force,
    log_density: Callable[[Array], Scalar],
    x: Array,
    tau: Scalar,
    *,
    n_velocities: int = 256,
    n_steps: int = 8,
    sigma_v: Scalar = 1.0,
) -> tuple[Array, Array]:
    """Two independent estimates of the HVP E[v_tau | x_tau = x] for a known data density, by importance sampling.

    Velocity Verlet is volume preserving and reversible, so the phase-space density at tau is
    rho_tau(x, u) = pi(x0') N(v0'; 0, sigma_v^2 I) with (x0', v0') = Phi_{-tau}(x, u) (Liouville). Drawing
    u_m ~ N(0, sigma_v^2 I) (antithetic pairs) and weighting by rho_tau(x, u_m) / N(u_m) gives the self-normalised
    estimate sum_m w_m u_m / sum_m w_m of E[v_tau | x_tau = x] for the discretised flow. Two independent halves are
    returned so that their dot product estimates ||E[v_tau | x_tau]||^2 without the O(1/M) variance bias.

    Args:
        key: PRNG key. force: autonomous `force(x, tau)`. log_density: log pi (unnormalised is fine), x (*d) -> ().
        x: position (*d). tau: () time. n_velocities: per half (even). n_steps: Verlet steps over [0, tau].
    Returns:
        (phi_a, phi_b), two independent estimates, each (*d).
    """
    half = n_velocities // 2

    def one(k):
        u = sigma_v * jax.random.normal(k, (half, *jnp.shape(x)), jnp.result_type(x))
        u = jnp.concatenate([u, -u])  # antithetic pairs cancel the leading odd term of the estimate

        def log_weight(ui):
            # Backward flow: negative time retraces Verlet exactly for an autonomous force.
            xb, vb = hamiltonian_flow(force, x, ui, -tau, n_steps=n_steps)
            return log_density(xb) + _gauss_normal_logpdf(vb, sigma_v) - _gauss_normal_logpdf(ui, sigma_v)

        w = jax.nn.softmax(jax.vmap(log_weight)(u))
        return jnp.tensordot(w, u, axes=1)

    ka, kb = jax.random.split(key)
    return one(ka), one(kb)


def hamiltonian_score_discrepancy(
    key: Key,
    force: Force,
    log_density: Callable[[Array], Scalar],
    x0: Array,
    tau_max: Scalar,
    *,
    n_tau: int = 6,
    n_velocities: int = 256,
    n_steps: int = 8,
    sigma_v: Scalar = 1.0,
) -> Scalar:
    """Hamiltonian score discrepancy HSD_T(F) = int_0^T E || E[v_tau | x_tau] ||^2 dtau, estimated for known pi.

    Gauss-Legendre quadrature over tau (n_tau nodes on [0, T]); at each node the data `x0` (N, *d) are pushed
    forward with fresh velocities N(0, sigma_v^2 I) to draws x_tau ~ p_tau, and ||E[v_tau | x_tau]||^2 is the dot
    product of the two independent importance-sampling estimates of `hamiltonian_velocity_posterior`. Zero iff
    F = sigma_v^2 grad log pi (HMC invariance); for small T, HSD_T ~ (T^3/3) E||F - sigma_v^2 grad log pi||^2
    (see `hsd_small_time`). The paper's normalisation of HSD was not available: this is the plain integral.

    Args:
        key: PRNG key. force: autonomous force. log_density: log pi. x0: data (N, *d). tau_max: T > 0.
        n_tau, n_velocities, n_steps: static quadrature, Monte Carlo and integration sizes.
    Returns:
        () the estimate.
    """
    nodes, weights = np.polynomial.legendre.leggauss(n_tau)
    taus = 0.5 * tau_max * (jnp.asarray(nodes, x0.dtype) + 1.0)
    weights = 0.5 * tau_max * jnp.asarray(weights, x0.dtype)
    n = x0.shape[0]

    def at_tau(k, tau):
        k_v, k_is = jax.random.split(k)
        v0 = sigma_v * jax.random.normal(k_v, x0.shape, x0.dtype)
        xt, _ = jax.vmap(lambda a, b: hamiltonian_flow(force, a, b, tau, n_steps=n_steps))(x0, v0)
        post = partial_posterior(k_is, xt, tau)
        return jnp.mean(jnp.sum((post[0] * post[1]).reshape(n, -1), axis=-1))

    def partial_posterior(k, xt, tau):
        keys = jax.random.split(k, n)
        return jax.vmap(
            lambda kk, xx: hamiltonian_velocity_posterior(
                kk, force, log_density, xx, tau, n_velocities=n_velocities, n_steps=n_steps, sigma_v=sigma_v
            )
        )(keys, xt)

    values = jax.lax.map(lambda a: at_tau(*a), (jax.random.split(key, n_tau), taus))
    return jnp.sum(weights * values)


def hsd_small_time(force: Force, score: Callable[[Array], Array], x0: Array, tau_max: Scalar, sigma_v=1.0) -> Scalar:
    """Leading term of the HSD for small T: (T^3 / 3) E_pi || F(x) - sigma_v^2 grad log pi(x) ||^2.

    Args: force(x, tau); score(x) = grad log pi(x); x0 (N, *d) data draws; tau_max () T.
    """
    diff = jax.vmap(lambda x: force(x, 0.0) - sigma_v**2 * score(x))(x0)
    return tau_max**3 / 3.0 * jnp.mean(jnp.sum(diff.reshape(x0.shape[0], -1) ** 2, axis=-1))


def linear_force_gaussian_hvp(k: Scalar, data_var: Scalar, tau: Scalar, sigma_v: Scalar = 1.0) -> tuple[Scalar, Scalar]:
    """Exact HVP for Gaussian data N(0, s^2 I) under the linear force F(x) = -k x (k >= 0).

    With w = sqrt(k), c = cos(w tau), S = sin(w tau)/w, per coordinate x_tau = c x0 + S v0 and
    v_tau = -k S x0 + c v0 are jointly Gaussian, so E[v_tau | x_tau = x] = beta x with
        Var x_tau = c^2 s^2 + S^2 sigma_v^2,   Cov(x_tau, v_tau) = c S (sigma_v^2 - k s^2),   beta = Cov / Var.
    Cov vanishes for k = sigma_v^2 / s^2 (the true score: HMC invariance, papers.md §7 item 16).
    Returns (beta, Var x_tau), each ().
    """
    c = jnp.cos(jnp.sqrt(k) * tau)
    s_over_w = _sin_over_alpha(jnp.sqrt(k), tau)
    var = c**2 * data_var + s_over_w**2 * sigma_v**2
    cov = c * s_over_w * (sigma_v**2 - k * data_var)
    return cov / var, var


def linear_force_gaussian_hsd(
    k: Scalar, data_var: Scalar, tau_max: Scalar, dim: int, sigma_v: Scalar = 1.0, n_quad: int = 64
) -> Scalar:
    """Exact HSD_T for data N(0, s^2 I_dim) and F = -k x: int_0^T dim * beta(tau)^2 Var x_tau dtau (Gauss-Legendre).

    Its small-T limit is (T^3/3) dim s^2 (k - sigma_v^2 / s^2)^2 = (T^3/3) E||F - sigma_v^2 grad log pi||^2.
    """
    nodes, weights = np.polynomial.legendre.leggauss(n_quad)
    taus = 0.5 * tau_max * (jnp.asarray(nodes) + 1.0)
    beta, var = linear_force_gaussian_hvp(k, data_var, taus, sigma_v)
    return 0.5 * tau_max * jnp.sum(jnp.asarray(weights) * dim * beta**2 * var)


__all__ = [
    "Force",
    "HarmonicForce",
    "ScoreForce",
    "VelocityVerlet",
    "hamiltonian_flow",
    "hamiltonian_score_discrepancy",
    "hamiltonian_velocity_posterior",
    "hsd_small_time",
    "linear_force_gaussian_hsd",
    "linear_force_gaussian_hvp",
    "oscillation_denoiser_to_score",
    "oscillation_denoiser_to_velocity",
    "oscillation_score_to_velocity",
    "oscillation_state",
    "oscillation_velocity_to_denoiser",
    "oscillation_velocity_to_score",
    "zero_force_denoiser_to_velocity",
    "zero_force_score_to_velocity",
    "zero_force_velocity_to_denoiser",
    "zero_force_velocity_to_score",
]
