"""LoReFT, Φ(h) = h + Rᵀ(W h + b − R h): its defining properties, its VJP, its argument checks.

Tolerance model for the properties (float32 and float64 alike). Every quantity is a
sum of products accumulated over at most d terms (H Wᵀ, H Rᵀ over d; Δ R over r <= d;
R Φ over d). Each accumulation of length k errs by about u·√k times the size of what it
adds (the probabilistic rounding bound, Higham & Mary 2019; the worst case is k·u, which
is never approached by independent roundings). The sizes per row of H are ‖h‖ (and
‖R h‖ <= ‖h‖, since R's rows are orthonormal) and ‖W h + b‖, so the error of any entry
of row i is bounded by

    atol_i = C · u · √d · (‖h_i‖ + ‖W h_i + b‖),     u = 2^-53 (float64), 2^-24 (float32)

with C = 16. Measured over 5,400 random cases (d from 1 to 576, scales 1e-3 to 1e3)
the largest error was 4.7 u·√d·(…), so C = 16 leaves a 3× margin and still fails at
any real defect (which shows up at O(1), not O(u)). The departure of R from orthonormality
after a cast to float32 is itself O(u) and sits inside the same bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from strategies import (
    EDGE_CASES,
    assert_close,
    assert_vjp_is_the_jacobian,
    cases,
    directional_fd_errors,
    unit_roundoff,
    with_edges,
)

from minireft import loreft
from minireft.stiefel import orthonormality_error

C = 16  # safety factor over the measured 4.7; see the module docstring
FD_RTOL = 1e-8  # VJP vs central differences, float64 (reference/SPEC.md, tolerances)


def row_atol(case, h, W, b) -> np.ndarray:
    """(N, 1) per-row absolute tolerance C·u·√d·(‖h‖ + ‖W h + b‖), computed in float64."""
    H = h.astype(np.float64).reshape(-1, case.d)  # (N, d)
    target = H @ W.astype(np.float64).T + b.astype(np.float64)  # (N, r)
    size = np.linalg.norm(H, axis=1) + np.linalg.norm(target, axis=1)  # (N,)
    return (C * unit_roundoff(case.dtype) * np.sqrt(case.d) * size)[:, None]


# ---------------------------------------------------------------- properties


@with_edges(EDGE_CASES)
@given(case=cases())
def test_identity_init_is_exactly_the_identity(case):
    """W = R, b = 0 ⇒ Δ = H Rᵀ − H Rᵀ, the same floating-point products twice ⇒ Δ = 0 and Φ(h) = h bit for bit."""
    h, p = case.h(), case.loreft()
    out = loreft.forward(h, p["R"], p["R"].copy(), np.zeros_like(p["b"]))
    assert out.dtype == h.dtype and out.shape == h.shape
    assert np.array_equal(out, h), f"[{case}] identity init moved h by {np.max(np.abs(out - h)):.3e}"


@with_edges(EDGE_CASES)
@given(case=cases())
def test_subspace_coordinates_are_set_to_Wh_plus_b(case):
    """R Φ(h) = R h + R Rᵀ (W h + b − R h) = W h + b, since R Rᵀ = I."""
    h, p = case.h(), case.loreft()
    out = loreft.forward(h, **p)
    assert out.dtype == h.dtype and out.shape == h.shape
    R, W, b = (p[k].astype(np.float64) for k in ("R", "W", "b"))
    H = h.astype(np.float64).reshape(-1, case.d)  # (N, d)
    got = out.astype(np.float64).reshape(-1, case.d) @ R.T  # (N, r)
    assert_close(got, H @ W.T + b, atol=row_atol(case, h, W, b), what="R Φ(h) vs W h + b", case=case)


@with_edges(EDGE_CASES)
@given(case=cases())
def test_nothing_moves_outside_the_row_space_of_R(case):
    """(I − RᵀR)(Φ(h) − h) = (I − RᵀR) Rᵀ Δ = (Rᵀ − Rᵀ R Rᵀ) Δ = 0."""
    h, p = case.h(), case.loreft()
    out = loreft.forward(h, **p)
    R = p["R"].astype(np.float64)
    E = (out.astype(np.float64) - h.astype(np.float64)).reshape(-1, case.d)  # (N, d) the edit
    outside = E - (E @ R.T) @ R  # (N, d)
    assert_close(outside, np.zeros_like(outside), atol=row_atol(case, h, p["W"], p["b"]),
                 what="(I − RᵀR)(Φ(h) − h)", case=case)


@given(case=cases(max_d=64))
def test_rows_are_edited_independently(case):
    """Φ acts on the last axis only: a (b, n, d) batch equals each (d,) row done alone."""
    h, p = case.h(), case.loreft()
    whole = loreft.forward(h, **p).reshape(-1, case.d)
    rows = np.stack([loreft.forward(row, **p) for row in h.reshape(-1, case.d)]) if h.size else whole
    assert_close(rows, whole, atol=row_atol(case, h, p["W"], p["b"]), what="row by row", case=case)


def test_a_non_orthonormal_R_breaks_the_properties():
    """The properties above are not vacuous: with R scaled by 1.1 (RRᵀ = 1.21 I) R Φ(h) ≠ W h + b."""
    rng = np.random.default_rng(0)
    p = loreft.init(16, 4, rng, dtype=np.float64)
    h = rng.standard_normal((3, 16))
    R = 1.1 * p["R"]
    got = loreft.forward(h, R, p["W"], p["b"]) @ R.T
    assert np.max(np.abs(got - (h @ p["W"].T + p["b"]))) > 0.1


# ---------------------------------------------------------------- VJP


def _fd_check(case, errors_by_name):
    for name, errors in errors_by_name.items():
        for fd, an, err in errors:
            assert err <= FD_RTOL, (
                f"[{case}] d{name}: ⟨grad, V⟩ = {an!r} vs central difference {fd!r}: "
                f"rel err {err:.3e} > {FD_RTOL}"
            )


@with_edges(EDGE_CASES, dtype=np.float64)
@given(case=cases(max_d=128, dtype=np.float64))
def test_vjp_matches_central_differences(case):
    """⟨dout, ∂Φ/∂x · V⟩ by central differences equals ⟨vjp_x(dout), V⟩ for x in h, R, W, b."""
    h, dout, p = case.h(), case.dout(), case.loreft()
    dh, dR, dW, db = loreft.vjp(h, p["R"], p["W"], p["b"], dout)
    grads = {"h": dh, "R": dR, "W": dW, "b": db}
    for name, g in grads.items():
        ref = h if name == "h" else p[name]
        assert g.shape == ref.shape and g.dtype == ref.dtype, f"d{name}: {g.shape} {g.dtype}"
    args = {"h": h, **p}
    _fd_check(case, {n: directional_fd_errors(loreft.forward, args, grads, dout, n, seed=case.seed % 1000)
                     for n in grads})


@pytest.mark.parametrize("r, d, lead", [(1, 1, ()), (1, 3, (2,)), (2, 3, (2,)), (3, 3, (1, 2)), (2, 5, (2, 2))])
def test_vjp_equals_the_full_finite_difference_jacobian(r, d, lead):
    """Every entry: vjp with dout = e_k is row k of the Jacobian; compared with the full central-difference Jacobian."""
    assert_vjp_is_the_jacobian(loreft, r, d, lead, FD_RTOL)


def test_finite_difference_check_catches_a_wrong_dR():
    """The check has teeth: dropping the −AᵀH term of dR (R's appearance inside Δ) fails it."""
    rng = np.random.default_rng(7)
    p = loreft.init(12, 3, rng, dtype=np.float64)
    h, dout = rng.standard_normal((4, 12)), rng.standard_normal((4, 12))
    _, dR, _, _ = loreft.vjp(h, p["R"], p["W"], p["b"], dout)
    A = dout @ p["R"].T  # (N, r)
    wrong = dR + A.T @ h  # = Δᵀ G only
    errors = directional_fd_errors(loreft.forward, {"h": h, **p}, {"R": wrong}, dout, "R")
    assert min(e for _, _, e in errors) > 1e-3


def test_vjp_is_linear_in_dout():
    rng = np.random.default_rng(3)
    p = loreft.init(10, 3, rng, dtype=np.float64)
    h, g1, g2 = (rng.standard_normal((5, 10)) for _ in range(3))
    a = loreft.vjp(h, p["R"], p["W"], p["b"], 2.0 * g1 - g2)
    b1 = loreft.vjp(h, p["R"], p["W"], p["b"], g1)
    b2 = loreft.vjp(h, p["R"], p["W"], p["b"], g2)
    for x, y, z in zip(a, b1, b2):
        np.testing.assert_allclose(x, 2.0 * y - z, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- init


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("r, d", [(1, 1), (4, 16), (16, 16), (8, 576)])
def test_init_paper_and_identity(r, d, dtype):
    rng = np.random.default_rng(r + d)
    paper = loreft.init(d, r, rng, kind="paper", dtype=dtype)
    assert {k: (v.shape, v.dtype) for k, v in paper.items()} == {
        "R": ((r, d), np.dtype(dtype)), "W": ((r, d), np.dtype(dtype)), "b": ((r,), np.dtype(dtype))}
    bound = 1 / np.sqrt(d)  # torch.nn.Linear(d, r): U(−1/√d, 1/√d)
    assert np.all(np.abs(paper["W"]) <= bound) and np.all(np.abs(paper["b"]) <= bound)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert orthonormality_error(paper["R"]) <= tol

    ident = loreft.init(d, r, np.random.default_rng(1), kind="identity", dtype=dtype)
    assert np.array_equal(ident["W"], ident["R"]) and not np.any(ident["b"])
    h = np.random.default_rng(2).standard_normal((3, d)).astype(dtype)
    assert np.array_equal(loreft.forward(h, **ident), h)


def test_init_is_deterministic_given_the_seed():
    a = loreft.init(32, 4, np.random.default_rng(5))
    b = loreft.init(32, 4, np.random.default_rng(5))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"d": 4, "r": 5}, ValueError, r"r=5 is greater than hidden size d=4"),
    ({"d": 0, "r": 1}, ValueError, r"d must be a positive integer"),
    ({"d": 4, "r": 0}, ValueError, r"r must be a positive integer"),
    ({"d": 4, "r": 2, "kind": "zeros"}, ValueError, r"kind must be 'paper' or 'identity'"),
])
def test_init_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        loreft.init(rng=np.random.default_rng(0), **kwargs)


# ---------------------------------------------------------------- bad inputs

R0 = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 2)))[0].T.copy()  # (2, 5)
GOOD = {"h": np.ones((3, 5)), "R": R0, "W": np.ones((2, 5)), "b": np.zeros(2)}

BAD_INPUTS = [
    ("h is a list", {"h": [[1.0] * 5]}, TypeError, r"h must be a numpy.ndarray, got list"),
    ("R is an int array", {"R": np.ones((2, 5), dtype=int)}, TypeError, r"R must have dtype float32 or float64, got int"),
    ("W is float16", {"W": np.ones((2, 5), np.float16)}, TypeError, r"W must have dtype float32 or float64, got float16"),
    ("h is a scalar", {"h": np.ones(())}, ValueError, r"h must have at least 1 dimension\(s\), got shape \(\)"),
    ("R is 1-D", {"R": np.ones(5)}, ValueError, r"R must be 2-D, got shape \(5,\)"),
    ("W has the wrong width", {"W": np.ones((2, 4))}, ValueError, r"W must have shape \(2, 5\), got \(2, 4\)"),
    ("W has the wrong rank", {"W": np.ones((3, 5))}, ValueError, r"W must have shape \(2, 5\), got \(3, 5\)"),
    ("b has the wrong length", {"b": np.zeros(3)}, ValueError, r"b must have shape \(2,\), got \(3,\)"),
    ("b is 2-D", {"b": np.zeros((1, 2))}, ValueError, r"b must be 1-D, got shape \(1, 2\)"),
    ("h has the wrong hidden size", {"h": np.ones((3, 4))}, ValueError, r"h must have shape \(\.\.\., 5\).*got \(3, 4\)"),
    ("rank > d", {"R": np.ones((6, 5)), "W": np.ones((6, 5)), "b": np.zeros(6)}, ValueError,
     r"R has rank r=6 greater than hidden size d=5"),
    ("mixed dtypes", {"h": np.ones((3, 5), np.float32)}, TypeError, r"share one dtype, got h=float32, R=float64"),
    ("W has a NaN", {"W": np.where(np.eye(2, 5) > 0, np.nan, 1.0)}, ValueError, r"W must be finite, found nan at index \(0, 0\)"),
    ("b has an inf", {"b": np.array([0.0, np.inf])}, ValueError, r"b must be finite, found inf at index \(1,\)"),
    ("R has a NaN", {"R": np.full((2, 5), np.nan)}, ValueError, r"R must be finite"),
]


@pytest.mark.parametrize("what, change, exc, match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_forward_and_vjp_reject_bad_inputs(what, change, exc, match):
    args = GOOD | change
    with pytest.raises(exc, match=match):
        loreft.forward(**args)
    dout = np.ones(np.shape(args["h"])) if isinstance(args["h"], np.ndarray) else np.ones((1, 5))
    with pytest.raises(exc, match=match):
        loreft.vjp(**args, dout=dout.astype(getattr(args["h"], "dtype", np.float64)))


@pytest.mark.parametrize("dout, exc, match", [
    (np.ones((3, 4)), ValueError, r"dout must have shape \(3, 5\), got \(3, 4\)"),
    (np.ones((3, 5), np.float32), TypeError, r"h=float64, dout=float32"),
    ([[1.0] * 5] * 3, TypeError, r"dout must be a numpy.ndarray, got list"),
])
def test_vjp_rejects_a_bad_dout(dout, exc, match):
    with pytest.raises(exc, match=match):
        loreft.vjp(**GOOD, dout=dout)


def test_forward_leaves_its_inputs_unchanged():
    rng = np.random.default_rng(11)
    p = loreft.init(8, 2, rng, dtype=np.float64)
    h, dout = rng.standard_normal((3, 8)), rng.standard_normal((3, 8))
    before = {k: v.copy() for k, v in ({"h": h, "dout": dout} | p).items()}
    loreft.forward(h, **p)
    loreft.vjp(h, **p, dout=dout)
    for k, v in ({"h": h, "dout": dout} | p).items():
        assert np.array_equal(v, before[k]), k
