"""Numerical tests of the 1-D Kac process maths (`fm_jax.kac`) against analytic answers (papers.md §7 items 3-12).

Notation: clock s (process time), rate a, speed c, r = sqrt(c^2 s^2 - x^2), z = a r / c. Float64 tests use
`jax.enable_x64`; statistical tolerances are written at each comparison from the sample size (seeds are fixed,
so every test is deterministic).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from experiments.bench_kac import accuracy_table, cone_regions, reference_velocity
from fm_jax import kac

N_DRAWS = 100_000  # one sampler shape for every Monte Carlo test (one compilation)
LAWS = [(9.0, 3.0, 0.05), (9.0, 3.0, 0.3), (9.0, 3.0, 1.0), (25.0, 2.0, 1.0), (1.0, 1.0, 5.0)]


@functools.lru_cache
def _legendre(n):
    return np.polynomial.legendre.leggauss(n)


def _gauss_legendre(lo, hi, n=300):
    nodes, weights = _legendre(n)
    half = 0.5 * (hi - lo)
    return lo + half * (nodes + 1.0), half * weights


def _density64(s, x, a, c):
    with jax.enable_x64(True):
        return np.array(kac.density(np.float64(s), np.asarray(x, np.float64), np.float64(a), np.float64(c)))


def _draws(key, s, a, c):
    return np.asarray(kac.sample(jax.random.key(key), s, a, c, (N_DRAWS,)), np.float64)


# ----------------------------------------------------------------------------------------------- the law


@pytest.mark.parametrize("a,c,s", LAWS)
def test_mass_of_density_and_atoms(a, c, s):
    """Item 3: the density integrates to 1 - e^{-as}; the atoms carry e^{-as}; total mass 1."""
    x, w = _gauss_legendre(-c * s, c * s)
    mass = float(np.sum(w * _density64(s, x, a, c)))
    atoms = float(kac.atom_mass(s, a))
    # p is analytic in x on the closed interval (a function of z^2), so Gauss-Legendre is exact to ~1e-12.
    np.testing.assert_allclose(mass, -np.expm1(-a * s), rtol=1e-9)
    np.testing.assert_allclose(atoms, np.exp(-a * s), rtol=1e-6)
    np.testing.assert_allclose(mass + np.exp(-a * s), 1.0, atol=1e-9)


@pytest.mark.parametrize("a,c,s", LAWS)
def test_variance_formula_matches_second_moment_of_the_law(a, c, s):
    """Item 4: Var K_s = (c^2/a)(s - (1 - e^{-2as})/(2a)) equals the second moment of density + atoms."""
    x, w = _gauss_legendre(-c * s, c * s)
    second = float(np.sum(w * x * x * _density64(s, x, a, c))) + np.exp(-a * s) * (c * s) ** 2
    with jax.enable_x64(True):
        var = float(kac.variance(np.float64(s), np.float64(a), np.float64(c)))
    np.testing.assert_allclose(var, second, rtol=1e-9)
    np.testing.assert_allclose(var, c * c / a * (s - (1 - np.exp(-2 * a * s)) / (2 * a)), rtol=1e-12)


def test_variance_paper_value_and_small_as_stability():
    # papers.md §6 row 4: a = 9, c = 3, s = 1 gives 0.944444.
    np.testing.assert_allclose(float(kac.variance(1.0, 9.0, 3.0)), 1 - 1 / 18 + np.exp(-18) / 18, rtol=1e-6)
    # Ballistic regime a s -> 0: Var = c^2 s^2 (1 - 2as/3 + (as)^2/3 - ...), no cancellation in float32.
    s = np.float32(1e-6)
    expected = 9.0 * 1e-12 * (1 - 2 * 9e-6 / 3)
    np.testing.assert_allclose(float(kac.variance(s, 9.0, 3.0)), expected, rtol=1e-6)
    for u in (1e-3, 0.0999, 0.999, 1.0, 1.001, 30.0):  # both sides of the series switch agree with float64
        with jax.enable_x64(True):
            ref = float(kac.variance(np.float64(u / 18), np.float64(9.0), np.float64(3.0)))
        np.testing.assert_allclose(float(kac.variance(np.float32(u / 18), 9.0, 3.0)), ref, rtol=2e-6)


@pytest.mark.parametrize("a,c,s", LAWS + [(1000.0, 1.0, 1.0)])
def test_sampler_mean_variance_and_atom_mass(a, c, s):
    """Item 4 (sampler): empirical mean, variance and atom frequency match the closed forms (a s up to 1e3)."""
    k = _draws(11, s, a, c)
    var = c * c / a * (s - (1 - np.exp(-2 * a * s)) / (2 * a))
    # |K| <= cs, so mu4 <= (cs)^2 var and the variance estimator has SD <= sqrt(((cs)^2 var - var^2) / n).
    se_var = np.sqrt(max((c * s) ** 2 * var - var**2, 0.0) / N_DRAWS)
    assert abs(k.mean()) < 5 * np.sqrt(var / N_DRAWS) + 1e-12
    assert abs(k.var() - var) < 5 * se_var + 1e-9 * var
    p_atom = np.exp(-a * s)
    on_atoms = np.mean(np.abs(k) == np.float32(c) * np.float32(s))
    assert abs(on_atoms - p_atom) < 5 * np.sqrt(p_atom * (1 - p_atom) / N_DRAWS) + 1.0 / N_DRAWS


def _continuous_cdf(s, a, c, n=20_001):
    """CDF of the continuous part conditioned on no atom, on a grid (float64, trapezoid on a fine grid)."""
    x = np.linspace(-c * s, c * s, n)
    p = _density64(s, x, a, c)
    p[0] = p[-1] = a * np.exp(-a * s) * (2 + a * s) / (4 * c)  # the limits at the cone (item 8)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(x))])
    return x, cdf / cdf[-1]


@pytest.mark.parametrize("a,c,s", [(9.0, 3.0, 0.3), (9.0, 3.0, 1.0), (25.0, 2.0, 1.0), (1.0, 1.0, 5.0)])
def test_sampler_matches_closed_form_law_ks(a, c, s):
    """Non-atom draws follow p_s / (1 - e^{-as}): one-sample KS test against the numerically integrated CDF."""
    k = _draws(12, s, a, c)
    k = k[np.abs(k) < np.float32(c) * np.float32(s)]
    grid, cdf = _continuous_cdf(s, a, c)
    result = stats.kstest(k, lambda v: np.interp(v, grid, cdf))
    # Under H0 the KS statistic is ~ 1.36 / sqrt(n) at the 5 % level; p > 1e-3 allows ~1.95 / sqrt(n).
    assert result.pvalue > 1e-3, result


def _poisson_switching(rng, n, s, a, c):
    """Direct simulation: Exponential(a) holding times, direction flips at each switch, uniform first sign."""
    m = int(a * s + 10 * np.sqrt(a * s) + 30)  # P(N >= m) < 1e-20
    hold = rng.exponential(1.0 / a, size=(n, m))
    times = np.cumsum(hold, axis=1)
    assert np.all(times[:, -1] > s)
    start = np.concatenate([np.zeros((n, 1)), times[:, :-1]], axis=1)
    seg = np.clip(np.minimum(times, s) - start, 0.0, None)  # time spent in each segment before s
    direction = np.where(np.arange(m) % 2 == 0, 1.0, -1.0)
    sign = rng.choice([-1.0, 1.0], size=n)
    return sign * c * (seg * direction).sum(axis=1)


@pytest.mark.parametrize("a,c,s", [(9.0, 3.0, 1.0), (9.0, 3.0, 0.1), (1000.0, 1.0, 1.0)])
def test_sampler_matches_poisson_switching_simulation(a, c, s):
    """Item 12: two-sample KS test between the exact sampler and a direct Poisson-switching simulation."""
    n_sim = 10_000
    sim = _poisson_switching(np.random.default_rng(0), n_sim, s, a, c)
    k = _draws(13, s, a, c)
    # Atoms (no switch) compared as frequencies: float32 c*s and float64 c*s differ in the last bits.
    atom_k, atom_sim = np.abs(k) >= c * s * (1 - 1e-6), np.abs(sim) >= c * s * (1 - 1e-12)
    p = np.exp(-a * s)
    assert abs(atom_k.mean() - atom_sim.mean()) < 5 * np.sqrt(p * (1 - p) * (1 / N_DRAWS + 1 / n_sim)) + 1e-4
    if (~atom_k).sum() > 100:
        result = stats.ks_2samp(k[~atom_k], sim[~atom_sim])
        assert result.pvalue > 1e-3, result


def test_sampler_shapes_dtypes_and_zero_clock():
    key = jax.random.key(0)
    s = jnp.array([0.0, 0.5, 1.0])
    out = kac.sample(key, s, 9.0, 3.0, (4, 3))
    assert out.shape == (4, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out[:, 0]), 0.0)  # s = 0: K_0 = 0
    assert np.all(np.abs(np.asarray(out)) <= 3.0 * np.asarray(s) + 1e-6)
    with jax.enable_x64(True):
        assert kac.sample(key, np.float64(0.5), 9.0, 3.0, (4, 3)).dtype == jnp.float64


# ------------------------------------------------------------------------------------- velocity identities

_INTERIOR = [
    (0.3, 0.4, 9.0, 3.0),
    (1.0, -2.1, 9.0, 3.0),
    (0.05, 0.1, 9.0, 3.0),
    (1.0, 1.5, 25.0, 2.0),
    (2.0, -0.2, 1.0, 1.0),
    (0.7, 0.69, 4.0, 1.0),
    (0.01, 0.005, 9.0, 3.0),  # z = 0.089: the Taylor-series branch
    (0.2, -0.5999, 9.0, 3.0),  # z = 0.06 near the cone, a s = 1.8
]


@pytest.mark.parametrize("s,x,a,c", _INTERIOR)
def test_density_solves_the_telegraph_equation(s, x, a, c):
    """Item 5: p_ss + 2 a p_s = c^2 p_xx inside the cone (float64 automatic derivatives)."""
    with jax.enable_x64(True):
        terms = np.array(_telegraph_terms(*(jnp.float64(v) for v in (s, x, a, c))), np.float64)
    assert abs(terms[0] + terms[1] - terms[2]) < 1e-10 * np.abs(terms).max()


@jax.jit
def _telegraph_terms(s, x, a, c):
    p_s = jax.grad(kac.density, 0)
    return (
        jax.grad(p_s, 0)(s, x, a, c),
        2 * a * p_s(s, x, a, c),
        c * c * jax.grad(jax.grad(kac.density, 1), 1)(s, x, a, c),
    )


@jax.jit
def _continuity_terms(s, x, a, c):
    flux = lambda xx: kac.density(s, xx, a, c) * kac.velocity(s, xx, a, c)  # noqa: E731
    return jax.grad(kac.density, 0)(s, x, a, c), jax.grad(flux)(x)


@pytest.mark.parametrize("s,x,a,c", _INTERIOR)
def test_continuity_equation(s, x, a, c):
    """Item 6: d_s p + d_x (p v) = 0 inside the cone (float64 automatic derivatives)."""
    with jax.enable_x64(True):
        p_s, flux_x = (float(v) for v in _continuity_terms(*(jnp.float64(v) for v in (s, x, a, c))))
    assert abs(p_s + flux_x) < 1e-10 * max(abs(p_s), abs(flux_x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_speed_bound_symmetry_atoms_and_light_cone_limit(dtype):
    """Item 7: |v| < c inside, v(+-cs) = +-c, v odd, v(s, 0) = 0, v -> c a s / (a s + 2) at the cone."""
    with jax.enable_x64(dtype == np.float64):
        a, c = dtype(9.0), dtype(3.0)
        s = np.geomspace(1e-6, 50.0, 200).astype(dtype)[:, None]
        frac = np.linspace(-1, 1, 201)[1:-1].astype(dtype)[None, :]
        x = (frac * c * s).astype(dtype)
        v = np.asarray(kac.velocity(s, x, a, c))
        assert np.all(np.abs(v) < c)
        np.testing.assert_array_equal(np.asarray(kac.velocity(s, -x, a, c)), -v)
        np.testing.assert_array_equal(np.asarray(kac.velocity(s, np.zeros_like(x), a, c)), 0.0)
        # Exact cone points: s with a 16-bit mantissa, so that c * s = 3 s is exact in either dtype.
        mant, expo = np.frexp(s[:, 0].astype(np.float64))
        s1 = np.ldexp(np.round(mant * 2**16) / 2**16, expo).astype(dtype)
        cone = np.asarray(kac.velocity(s1, (c * s1).astype(dtype), a, c))
        np.testing.assert_array_equal(cone, c)
        np.testing.assert_array_equal(np.asarray(kac.velocity(s1, -(c * s1).astype(dtype), a, c)), -c)
        eps = 1e-6 if dtype == np.float32 else 1e-13
        near = np.asarray(kac.velocity(s1, (c * s1 * (1 - eps)).astype(dtype), a, c))
        limit = c * a * s1 / (a * s1 + 2)
        # The slope of v in 1 - |x|/(cs) is ~ c (a s)^2 / 8 per unit of z^2 / (2 (as)^2): O(eps (as)^2) offset.
        tol = 2e-6 if dtype == np.float32 else 1e-11
        assert np.all(np.abs(near / limit - 1) <= tol + 4 * eps * (a * s1) ** 2 / (a * s1 + 2))


@pytest.mark.parametrize("a,c,s", LAWS)
def test_boundary_mass_balance(a, c, s):
    """Item 8: 2 p(cs-) (c - v(cs-)) = a e^{-as} and p(cs-) = a e^{-as} (2 + as) / (4c)."""
    with jax.enable_x64(True):
        x = np.float64(c * s * (1 - 1e-14))
        p = float(kac.density(np.float64(s), x, a, c))
        v = float(kac.velocity(np.float64(s), x, a, c))
    np.testing.assert_allclose(p, a * np.exp(-a * s) * (2 + a * s) / (4 * c), rtol=1e-10)
    np.testing.assert_allclose(2 * p * (c - v), a * np.exp(-a * s), rtol=1e-10)


def test_small_z_form_and_ratio_form():
    """Item 9: v ~ x / (s + 2/a) for small z, and the i0e/i1e ratio form equals c x I1 / (r I0 + c s I1)."""
    with jax.enable_x64(True):
        a, c, s = 9.0, 3.0, np.geomspace(1e-4, 1e-1, 50)
        x = c * s * 0.5
        z = a * np.sqrt(c * c * s * s - x * x) / c
        v = np.asarray(kac.velocity(s, x, a, c))
        # h(z) = 2 + z^2/4 + O(z^4): relative offset of the small-z form is ~ z^2 / (4 (a s + 2)).
        dev = 1 - v / (x / (s + 2 / a))
        assert np.all(dev >= 0) and np.all(dev <= z * z / (4 * (a * s + 2)) * (1 + 1e-9) + 1e-15)
        assert np.all(dev >= z * z / 8 / (a * s + 3))  # h - 2 >= z^2/8 and h <= 3 for z <= 1
        # Unscaled Bessel functions (fine for z < 700) against the library and the float64 reference.
        s2 = np.linspace(0.01, 3.0, 300)
        x2 = c * s2 * np.linspace(-0.999, 0.999, 300)
        r2 = np.sqrt(c * c * s2 * s2 - x2 * x2)
        z2 = a * r2 / c
        direct = c * x2 * special.i1(z2) / (r2 * special.i0(z2) + c * s2 * special.i1(z2))
        np.testing.assert_allclose(np.asarray(kac.velocity(s2, x2, a, c)), direct, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(reference_velocity(s2, x2, a, c), direct, rtol=1e-12)


def test_diffusion_limit():
    """Item 10: a = c^2 / sigma^2, c -> inf: v(s, x) -> x / (2s) and Law(K_s) -> N(0, sigma^2 s)."""
    sigma2, s = 1.0, 0.5
    x = np.linspace(-2.0, 2.0, 41)
    errors = []
    with jax.enable_x64(True):
        for c in (10.0, 100.0, 1000.0):
            v = np.asarray(kac.velocity(s, x, c * c / sigma2, c))
            errors.append(np.max(np.abs(v - x / (2 * s))))
            np.testing.assert_allclose(float(kac.variance(s, c * c / sigma2, c)), sigma2 * s, rtol=2 / (c * c * s))
    # v = a x / (a s + z + 1/2 + O(1/z)) with z ~ a s - x^2 / (2 sigma^2 s): the error is O(1 / (a s)).
    assert errors[1] < errors[0] / 50 and errors[2] < errors[1] / 50 and errors[2] < 1e-5, errors
    k = _draws(14, s, 1e4, 100.0)  # a s = 5e3
    result = stats.kstest(k, stats.norm(scale=np.sqrt(sigma2 * s)).cdf)
    assert result.pvalue > 1e-3, result


# ------------------------------------------------------------------------------------------- numerics


def test_float32_accuracy_against_float64_reference_by_region():
    """Float32 velocity within 1e-5 relative of the float64 reference in every region of the cone."""
    table = accuracy_table(n=20_000, seed=1)
    for region, row in table.items():
        assert row["nonfinite"] == 0, region
        assert row["max_rel_err"] < 1e-5, (region, row)
        assert row["max_abs_over_c"] <= 1.0, (region, row)


def test_float64_velocity_matches_reference():
    with jax.enable_x64(True):
        for s, x, a, c in cone_regions(5_000, seed=2).values():
            s, x, a, c = (np.asarray(v, np.float64) for v in (s, x, a, c))
            v = np.asarray(kac.velocity(s, x, a, c))
            ref = reference_velocity(s, x, a, c)
            np.testing.assert_allclose(v, ref, rtol=1e-11, atol=1e-300)


_F32 = lambda v: float(np.float32(v))  # noqa: E731 (hypothesis wants float32-exact bounds)


@settings(max_examples=300, deadline=None)
@given(
    s=st.one_of(st.just(0.0), st.floats(_F32(1e-12), 100.0, width=32, allow_subnormal=False)),
    frac=st.one_of(
        st.sampled_from([0.0, 1.0, -1.0, 1.5, -2.0]), st.floats(_F32(-1.2), _F32(1.2), width=32, allow_subnormal=False)
    ),
    a=st.floats(_F32(1e-3), 1e3, width=32, allow_subnormal=False),
    c=st.floats(_F32(1e-3), 1e3, width=32, allow_subnormal=False),
)
def test_property_float32_finite_and_speed_bound(s, frac, a, c):
    """Property: float32 velocity, density, variance finite on and around the closed cone; |v| <= c; |v| < c
    strictly inside when a s <= 1e4 (the interior limit c a s / (a s + 2) is then below c in float32)."""
    s32, a32, c32 = np.float32(s), np.float32(a), np.float32(c)
    x32 = np.float32(frac * float(c32) * float(s32))
    v = float(_velocity32(s32, x32, a32, c32))
    p = float(_density32(s32, x32, a32, c32))
    var = float(_variance32(s32, a32, c32))
    assert np.isfinite(v) and np.isfinite(p) and np.isfinite(var)
    assert abs(v) <= float(c32) and p >= 0.0 and var >= 0.0
    # Inside: below the exact c s and below fl(c s), where float32 atoms sit (`kac.velocity` docstring).
    inside = abs(float(x32)) < min(float(c32) * float(s32), float(c32 * s32))
    if inside and float(a32) * float(s32) <= 1e4:
        assert abs(v) < float(c32)


_velocity32 = jax.jit(kac.velocity)
_density32 = jax.jit(kac.density)
_variance32 = jax.jit(kac.variance)


def _grad_all(f):
    return jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1, 2, 3))))


@pytest.mark.parametrize(
    "s,x,a,c",
    [
        (0.3, 0.0, 9.0, 3.0),
        (0.3, 0.9 * (1 - 1e-9), 9.0, 3.0),
        (1e-7, 1e-7, 9.0, 3.0),
        (1.0, 2.0, 9.0, 3.0),
        (5.8, 0.9198, 593.75, 0.159),
        (0.05, -0.149, 9.0, 3.0),
    ],
)
def test_gradients_match_finite_differences_float64(s, x, a, c):
    """Derivatives of v in (s, x, a, c) (float64) vs central differences, including x = 0, the cone and s ~ 0."""
    with jax.enable_x64(True):
        args = [np.float64(v) for v in (s, x, a, c)]
        grads = jax.grad(kac.velocity, argnums=(0, 1, 2, 3))(*args)
        for i, g in enumerate(grads):
            h = 1e-6 * max(abs(args[i]), 1e-3 * (args[0] if i == 1 else 1.0))
            plus, minus = list(args), list(args)
            plus[i] += h
            minus[i] -= h
            gap = args[3] * args[0] - abs(args[1])
            h = min(h, 0.1 * gap / (args[3], 1.0, 1.0, args[0])[i]) if i != 2 else h  # stay inside the cone
            plus, minus = list(args), list(args)
            plus[i] += h
            minus[i] -= h
            v0 = abs(float(kac.velocity(*args)))
            fd = (float(kac.velocity(*plus)) - float(kac.velocity(*minus))) / (2 * h)
            scale = v0 / max(abs(args[i]), 1e-300) + abs(fd)
            # Central differences: O(h^2) truncation (1e-6 of the scale) + rounding ~1e-16 |v| / h.
            assert abs(float(g) - fd) <= 1e-6 * scale + 1e-15 * v0 / h + 1e-12, (i, float(g), fd)


def test_float32_gradients_finite_everywhere_and_close_to_float64():
    rng = np.random.default_rng(3)
    n = 4000
    a = np.exp(rng.uniform(np.log(0.1), np.log(1e3), n)).astype(np.float32)
    c = np.exp(rng.uniform(np.log(0.1), np.log(10.0), n)).astype(np.float32)
    s = np.exp(rng.uniform(np.log(1e-4), np.log(10.0), n)).astype(np.float32)
    x = (rng.uniform(-1, 1, n) * c * s * 0.999).astype(np.float32)
    g32 = [np.asarray(g, np.float64) for g in _grad_all(kac.velocity)(s, x, a, c)]
    with jax.enable_x64(True):
        args64 = [np.asarray(v, np.float64) for v in (s, x, a, c)]
        g64 = [np.asarray(g) for g in _grad_all(kac.velocity)(*args64)]
        v64 = np.abs(np.asarray(kac.velocity(*args64)))
    for i in range(4):
        assert np.all(np.isfinite(g32[i]))
        scale = np.abs(g64[i]) + v64 / np.abs(args64[i])
        # float32 rounding is amplified by the conditioning of v near the cone at large a s: 1e-4 of the scale.
        assert np.max(np.abs(g32[i] - g64[i]) / scale) < 1e-4, i
    # The edge cases: the origin, the cone itself, outside, s = 0.
    edge = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 1.5], [0.5, -1.5], [0.5, 2.0], [1e-30, 0.0]], np.float32)
    for gs in _grad_all(kac.velocity)(edge[:, 0], edge[:, 1], np.full(6, 9.0, np.float32), np.full(6, 3.0, np.float32)):
        assert np.all(np.isfinite(np.asarray(gs)))
    for gs in _grad_all(kac.density)(edge[:, 0], edge[:, 1], np.full(6, 9.0, np.float32), np.full(6, 3.0, np.float32)):
        assert np.all(np.isfinite(np.asarray(gs)))


@pytest.mark.parametrize(
    "call",
    [
        lambda a, c, s: kac.velocity(s, 0.1, a, c),
        lambda a, c, s: kac.density(s, 0.1, a, c),
        lambda a, c, s: kac.variance(s, a, c),
        lambda a, c, s: kac.sample(jax.random.key(0), s, a, c, (2,)),
    ],
)
def test_bad_parameters_raise(call):
    with pytest.raises(ValueError, match="a \\(switching rate\\)"):
        call(0.0, 3.0, 0.5)
    with pytest.raises(ValueError, match="c \\(speed\\)"):
        call(9.0, -1.0, 0.5)
    with pytest.raises(ValueError, match="s \\(Kac clock\\)"):
        call(9.0, 3.0, np.array([0.5, -0.1]))
    with pytest.raises(ValueError, match="a \\(switching rate\\)"):
        kac.atom_mass(0.5, -2.0)


def test_narrow_float_inputs_are_computed_in_float32():
    s, x = jnp.bfloat16(0.5), jnp.bfloat16(0.3)
    v = kac.velocity(s, x, 9.0, 3.0)
    assert v.dtype == jnp.bfloat16
    ref = float(kac.velocity(np.float32(s), np.float32(x), 9.0, 3.0))
    assert abs(float(v) - ref) <= 2**-8 * abs(ref)  # one bfloat16 rounding of the float32 result
    assert kac.density(s, x, 9.0, 3.0).dtype == jnp.bfloat16
    assert kac.variance(jnp.float16(1.0), 9.0, 3.0).dtype == jnp.float16


def test_gamma_acceptance_exponent_has_no_cancellation():
    # log(1+y) - y + y^2/2 - y^3/3 against float64 mpmath-free reference: the series sum_{k>=4} (-1)^{k+1} y^k/k
    # (60 terms) for |y| < 0.5, numpy's float64 log1p elsewhere; relative tolerance 3e-5 in float32 (the direct
    # form beyond |y| = 1/4 loses up to ~250 ulps; the textbook form loses everything as y -> 0).
    from fm_jax.kac import _log1p_remainder

    y = np.concatenate([np.linspace(-0.5, 0.5, 401), [-0.9, 0.8, 3.0, 1e-4, -1e-4]])
    k = np.arange(4, 64)
    ref = np.where(np.abs(y) < 0.5, (((-1.0) ** (k + 1)) * y[:, None] ** k / k).sum(1),
                   np.log1p(y) - y + y**2 / 2 - y**3 / 3)
    got = np.asarray(_log1p_remainder(jnp.asarray(y, jnp.float32)), np.float64)
    np.testing.assert_allclose(got, ref, rtol=3e-5, atol=0)


def test_sampler_variance_at_huge_rate_float32():
    # a s = 9e8: Gamma shapes ~4.5e8, where the textbook Marsaglia-Tsang exponent cancels in float32. The sample
    # variance of n Gaussian-like draws has relative s.d. sqrt(2/n) = 0.014 at n = 10^4: 5 s.d. = 0.07.
    s, a, c, n = 1e8, 9.0, 3.0, 10_000
    x = np.asarray(kac.sample(jax.random.key(3), np.float32(s), np.float32(a), np.float32(c), (n,)), np.float64)
    assert np.all(np.isfinite(x))
    assert abs(x.var() / float(kac.variance(s, a, c)) - 1.0) < 0.07
