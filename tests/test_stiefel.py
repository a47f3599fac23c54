"""The Stiefel manifold St(r, d) = {R : R Rᵀ = I_r}: tangent projection, both retractions,
random points, the orthonormality error.

Tolerances. project_tangent's tangency and idempotence residuals are sums of d products
of R (unit rows) with G, so they err by about u·√d·‖G_i‖ (G_i a row of G); measured worst
over 400 cases (d up to 576, both dtypes): 6.0 and 2.8 in those units; the tests use
C = 16. Orthonormality after a retraction depends on neither the step nor the conditioning
of R + ξ (Householder QR and the SVD return orthonormal factors to O(u) always): measured
worst 3.6e-15 (float64) and 8.9e-7 (float32), against the policy's 1e-12 and 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from strategies import (
    EDGE_STIEFEL,
    StiefelCase,
    assert_close,
    stiefel_cases,
    unit_roundoff,
    with_edges,
)

from minireft import stiefel
from minireft.stiefel import (
    orthonormality_error,
    project_tangent,
    random_stiefel,
    retract_polar,
    retract_qr,
)

C = 16
ORTH_TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
RETRACTIONS = {"polar": retract_polar, "qr": retract_qr}


def proj_atol(case, G) -> float:
    return C * unit_roundoff(case.dtype) * np.sqrt(case.d) * float(np.max(np.linalg.norm(G.astype(np.float64), axis=1)))


# ---------------------------------------------------------------- tangent projection


@with_edges(EDGE_STIEFEL)
@given(case=stiefel_cases())
def test_project_tangent_gives_a_tangent_vector(case):
    """ξ = P_R(G) satisfies ξRᵀ + Rξᵀ = 0: GRᵀ + RGᵀ − sym(GRᵀ)RRᵀ − RRᵀsym(GRᵀ) = 2 sym(GRᵀ) − 2 sym(GRᵀ)."""
    R, G = case.R(), case.ambient()
    xi = project_tangent(R, G)
    assert xi.shape == R.shape and xi.dtype == R.dtype
    X, R64 = xi.astype(np.float64), R.astype(np.float64)
    residual = X @ R64.T + R64 @ X.T  # (r, r)
    assert_close(residual, np.zeros_like(residual), atol=proj_atol(case, G), what="ξRᵀ + Rξᵀ", case=case)


@with_edges(EDGE_STIEFEL)
@given(case=stiefel_cases())
def test_project_tangent_is_an_orthogonal_projection(case):
    """P_R(P_R(G)) = P_R(G); G − P_R(G) = sym(GRᵀ) R is normal, so ⟨P_R(G), G − P_R(G)⟩ = 0;
    and a tangent vector (built here from the formula) is left as it is."""
    R, G = case.R(), case.ambient()
    xi = project_tangent(R, G)
    atol = proj_atol(case, G)
    assert_close(project_tangent(R, xi), xi, atol=atol, what="P(P(G)) vs P(G)", case=case)
    inner = float(np.sum(xi.astype(np.float64) * (G.astype(np.float64) - xi.astype(np.float64))))
    scale = np.linalg.norm(G.astype(np.float64)) ** 2
    assert abs(inner) <= C * unit_roundoff(case.dtype) * np.sqrt(case.d) * max(scale, 1e-300), (
        f"[{case}] ⟨P(G), G − P(G)⟩ = {inner:.3e}")
    tangent = case.tangent()
    assert_close(project_tangent(R, tangent), tangent, atol=proj_atol(case, tangent) + 1e-300,
                 what="P(ξ) vs ξ for a tangent ξ", case=case)


def test_project_tangent_removes_the_normal_part():
    """A normal vector S R (S symmetric) projects to 0; a skew Ω R (tangent) is kept."""
    rng = np.random.default_rng(0)
    R = random_stiefel(3, 7, rng)
    A = rng.standard_normal((3, 3))
    np.testing.assert_allclose(project_tangent(R, (A + A.T) @ R), 0, atol=1e-14)
    np.testing.assert_allclose(project_tangent(R, (A - A.T) @ R), (A - A.T) @ R, atol=1e-14)


# ---------------------------------------------------------------- retractions


@pytest.mark.parametrize("name", RETRACTIONS)
@with_edges(EDGE_STIEFEL)
@given(case=stiefel_cases())
def test_retractions_land_on_the_manifold_for_any_step(name, case):
    """polar: U Vᵀ (U Vᵀ)ᵀ = U Uᵀ = I. QR: Qᵀ has the orthonormal columns of Q as rows.
    Neither depends on the step size, so steps from 1e-8 to 1e3 all land on St(r, d)."""
    R = case.R()
    tangent, ambient = case.tangent(), case.ambient()
    for xi in (0.0 * tangent, 1e-8 * tangent, tangent, 1e3 * tangent, ambient):  # tangent steps, and any step
        out = RETRACTIONS[name](R, xi.astype(case.dtype))
        assert out.shape == R.shape and out.dtype == R.dtype
        err = orthonormality_error(out)
        assert err <= ORTH_TOL[case.dtype], f"[{case}] {name} ‖ξ‖={np.linalg.norm(xi):.1e}: max|RRᵀ − I| = {err:.3e}"


@pytest.mark.parametrize("name", RETRACTIONS)
@with_edges(EDGE_STIEFEL, dtype=np.float64)
@given(case=stiefel_cases(max_d=96, dtype=np.float64))
def test_retractions_agree_with_the_straight_line_to_first_order(name, case):
    """‖retract(R, tξ) − (R + tξ)‖ = O(t²): the fitted slope of log error vs log t is 2.

    (R + tξ)(R + tξ)ᵀ = I + t²ξξᵀ for a tangent ξ, so the line leaves the manifold at second
    order and a retraction (which matches it to first order) differs from it by Θ(t²)."""
    xi = case.tangent()
    assume(np.linalg.norm(xi) > 0)  # r = d = 1: the tangent space is {0}
    R = case.R()
    ts = np.logspace(-4, -1, 7)
    errs = np.array([np.linalg.norm(RETRACTIONS[name](R, t * xi) - (R + t * xi)) for t in ts])
    slope = np.polyfit(np.log(ts), np.log(errs), 1)[0]
    assert abs(slope - 2) <= 0.1, f"[{case}] {name}: slope {slope:.4f}, errors {errs}"


@pytest.mark.parametrize("name", RETRACTIONS)
def test_retraction_slopes_on_a_fixed_case(name):
    """A printed, fixed case (pytest -s shows it): slope ≈ 2 for r = 4, d = 16."""
    case = StiefelCase(4, 16, np.dtype(np.float64), seed=0)
    R, xi = case.R(), case.tangent()
    ts = np.logspace(-5, -1, 9)
    errs = np.array([np.linalg.norm(RETRACTIONS[name](R, t * xi) - (R + t * xi)) for t in ts])
    slope = np.polyfit(np.log(ts), np.log(errs), 1)[0]
    print(f"\n  retract_{name}: log-log slope of ‖retract(R, tξ) − (R + tξ)‖ vs t = {slope:.6f}")
    assert abs(slope - 2) <= 0.05


@pytest.mark.parametrize("name", RETRACTIONS)
@with_edges(EDGE_STIEFEL)
@given(case=stiefel_cases())
def test_retracting_a_zero_step_returns_R(name, case):
    """retract(R, 0) = R: polar because R = U·I·Vᵀ already; QR only because of the sign fix."""
    R = case.R()
    out = RETRACTIONS[name](R, np.zeros_like(R))
    tol = 1e-12 if case.dtype == np.float64 else 1e-5
    assert_close(out, R, atol=tol, what=f"retract_{name}(R, 0)", case=case)


def test_raw_qr_without_the_sign_fix_does_not_return_R():
    """Why the sign fix: LAPACK's Householder QR returns T with negative diagonal entries
    (each reflector maps a column to −sign(x₁)‖x‖e₁), so Qᵀ from a bare np.linalg.qr flips
    rows of R. retract_qr multiplies Q's columns by sign(diag T) and gets R back."""
    R = random_stiefel(4, 10, np.random.default_rng(0))
    Q, T = np.linalg.qr(R.T)
    assert np.any(np.diag(T) < 0), "this seed must show a negative diagonal"
    assert np.max(np.abs(Q.T - R)) > 0.1, "the unfixed factor should differ from R"
    np.testing.assert_allclose(retract_qr(R, np.zeros_like(R)), R, atol=1e-12)


@with_edges(EDGE_STIEFEL, dtype=np.float64)
@given(case=stiefel_cases(max_d=96, dtype=np.float64))
def test_qr_retraction_is_the_sign_fixed_factor_and_polar_is_the_nearest_point(case):
    """QR: T = R'(R + ξ)ᵀ is upper triangular with diag(T) > 0, i.e. R' is the unique
    factor. Polar: R'(R + ξ)ᵀ = U Σ Uᵀ is symmetric positive definite."""
    R, xi = case.R(), case.ambient()
    M = R + xi
    T = retract_qr(R, xi) @ M.T  # (r, r)
    scale = np.linalg.norm(M)
    assert np.all(np.abs(np.tril(T, -1)) <= 1e-12 * scale) and np.all(np.diag(T) > 0), f"[{case}] {T}"
    P = retract_polar(R, xi) @ M.T  # (r, r)
    np.testing.assert_allclose(P, P.T, atol=1e-12 * scale)
    assert np.min(np.linalg.eigvalsh(0.5 * (P + P.T))) > 0


# ---------------------------------------------------------------- random points, error


@with_edges(EDGE_STIEFEL)
@given(case=stiefel_cases())
def test_random_stiefel_is_on_the_manifold(case):
    R = case.R()
    assert R.shape == (case.r, case.d) and R.dtype == case.dtype
    assert orthonormality_error(R) <= ORTH_TOL[case.dtype]


def test_random_stiefel_is_deterministic_given_the_seed():
    a = random_stiefel(3, 9, np.random.default_rng(42))
    b = random_stiefel(3, 9, np.random.default_rng(42))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, random_stiefel(3, 9, np.random.default_rng(43)))


def test_orthonormality_error_is_max_abs_of_RRt_minus_I():
    R = np.array([[1.5, 0.0, 0.0], [0.0, 1.0, 0.0]])  # RRᵀ = diag(2.25, 1)
    assert orthonormality_error(R) == 1.25
    R = np.array([[1.0, 0.0], [1.0, 0.0]])  # rows not orthogonal: off-diagonal 1
    assert orthonormality_error(R) == 1.0
    assert orthonormality_error(np.eye(3, 5)) == 0.0


# ---------------------------------------------------------------- bad inputs

R0 = np.eye(2, 5)
BAD = [
    (project_tangent, (R0, np.ones((2, 4))), ValueError, r"G must have shape \(2, 5\), got \(2, 4\)"),
    (project_tangent, (R0, np.ones((2, 5), np.float32)), TypeError, r"R=float64, G=float32"),
    (project_tangent, (R0.tolist(), np.ones((2, 5))), TypeError, r"R must be a numpy.ndarray, got list"),
    (project_tangent, (np.ones((6, 5)), np.ones((6, 5))), ValueError, r"rank r=6 greater than hidden size d=5"),
    (retract_polar, (R0, np.ones(5)), ValueError, r"xi must have at least 2 dimension\(s\), got shape \(5,\)"),
    (retract_qr, (R0, np.ones((3, 5))), ValueError, r"xi must have shape \(2, 5\), got \(3, 5\)"),
    (retract_qr, (R0.astype(np.float32), R0), TypeError, r"R=float32, xi=float64"),
    (orthonormality_error, (np.ones(3),), ValueError, r"R must have at least 2 dimension\(s\), got shape \(3,\)"),
    (random_stiefel, (4, 3, np.random.default_rng(0)), ValueError, r"rank r=4 is greater than hidden size d=3"),
    (random_stiefel, (0, 3, np.random.default_rng(0)), ValueError, r"r must be a positive integer, got 0"),
    (random_stiefel, (2, 3, 0), TypeError, r"rng must be a numpy.random.Generator, got int"),
]


@pytest.mark.parametrize("f, args, exc, match", BAD, ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs_are_rejected_with_names_and_shapes(f, args, exc, match):
    with pytest.raises(exc, match=match):
        f(*args)


@pytest.mark.parametrize("name", ["project_tangent", "retract_polar", "retract_qr"])
def test_a_stack_of_R_is_each_matrix_on_its_own(name):
    """f(stack(R_k), stack(G_k)) = stack(f(R_k, G_k)), bit for bit: an optimizer steps every R
    of one shape as one stack, and must get what stepping them one by one gives."""
    rng = np.random.default_rng(3)
    R = np.stack([random_stiefel(3, 17, rng) for _ in range(4)]).reshape(2, 2, 3, 17)  # (2, 2, r, d)
    G = 0.3 * rng.standard_normal(R.shape)
    fn = getattr(stiefel, name)
    one_by_one = np.stack([fn(R[i, j], G[i, j]) for i in range(2) for j in range(2)]).reshape(R.shape)
    np.testing.assert_array_equal(fn(R, G), one_by_one)
    assert orthonormality_error(R) == max(orthonormality_error(R[i, j]) for i in range(2) for j in range(2))
