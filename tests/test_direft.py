"""DiReFT, Φ(h) = h + W2ᵀ(W1 h + b): its properties, its VJP, its argument checks.

The tolerance model is LoReFT's (see test_loreft.py): accumulations of length <= d err by
about u·√d times the size of what they add, here ‖h‖ and ‖W1 h + b‖ per row (W2 has
orthonormal rows in these cases, as after init); C = 16 over a measured worst of < 5.
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

from minireft import direft
from minireft.stiefel import orthonormality_error

C = 16
FD_RTOL = 1e-8


def row_atol(case, h, W1, b) -> np.ndarray:
    """(N, 1): C·u·√d·(‖h‖ + ‖W1 h + b‖) per row, in float64."""
    H = h.astype(np.float64).reshape(-1, case.d)  # (N, d)
    Z = H @ W1.astype(np.float64).T + b.astype(np.float64)  # (N, r)
    size = np.linalg.norm(H, axis=1) + np.linalg.norm(Z, axis=1)
    return (C * unit_roundoff(case.dtype) * np.sqrt(case.d) * size)[:, None]


@with_edges(EDGE_CASES)
@given(case=cases())
def test_forward_is_the_formula(case):
    """Φ(h) = h + W2ᵀ(W1 h + b), against an independent float64 einsum per row."""
    h, p = case.h(), case.direft()
    out = direft.forward(h, **p)
    assert out.dtype == h.dtype and out.shape == h.shape
    H = h.astype(np.float64).reshape(-1, case.d)  # (N, d)
    W1, W2, b = (p[k].astype(np.float64) for k in ("W1", "W2", "b"))
    want = H + np.einsum("nr,rd->nd", np.einsum("rd,nd->nr", W1, H) + b, W2)
    assert_close(out.reshape(-1, case.d), want, atol=row_atol(case, h, W1, b), what="DiReFT forward", case=case)


@with_edges(EDGE_CASES)
@given(case=cases())
def test_identity_init_is_exactly_the_identity(case):
    """W1 = 0, b = 0 ⇒ Z = 0 exactly ⇒ Φ(h) = h + 0 = h bit for bit."""
    h, p = case.h(), case.direft()
    out = direft.forward(h, np.zeros_like(p["W1"]), p["W2"], np.zeros_like(p["b"]))
    assert np.array_equal(out, h)


@with_edges(EDGE_CASES)
@given(case=cases())
def test_the_edit_lies_in_the_row_space_of_W2(case):
    """Φ(h) − h = W2ᵀ z ⇒ with orthonormal W2: W2 (Φ(h) − h) = z = W1 h + b and the rest is 0."""
    h, p = case.h(), case.direft()
    out = direft.forward(h, **p)
    W1, W2, b = (p[k].astype(np.float64) for k in ("W1", "W2", "b"))
    H = h.astype(np.float64).reshape(-1, case.d)
    E = out.astype(np.float64).reshape(-1, case.d) - H  # (N, d)
    atol = row_atol(case, h, W1, b)
    assert_close(E @ W2.T, H @ W1.T + b, atol=atol, what="W2 (Φ(h) − h)", case=case)
    assert_close(E - (E @ W2.T) @ W2, np.zeros_like(E), atol=atol, what="(I − W2ᵀW2)(Φ(h) − h)", case=case)


@with_edges(EDGE_CASES, dtype=np.float64)
@given(case=cases(max_d=128, dtype=np.float64))
def test_vjp_matches_central_differences(case):
    """⟨dout, ∂Φ/∂x · V⟩ by central differences equals ⟨vjp_x(dout), V⟩ for x in h, W1, W2, b."""
    h, dout, p = case.h(), case.dout(), case.direft()
    dh, dW1, dW2, db = direft.vjp(h, p["W1"], p["W2"], p["b"], dout)
    grads = {"h": dh, "W1": dW1, "W2": dW2, "b": db}
    for name, g in grads.items():
        ref = h if name == "h" else p[name]
        assert g.shape == ref.shape and g.dtype == ref.dtype, f"d{name}: {g.shape} {g.dtype}"
    args = {"h": h, **p}
    for name in grads:
        for fd, an, err in directional_fd_errors(direft.forward, args, grads, dout, name, seed=case.seed % 1000):
            assert err <= FD_RTOL, f"[{case}] d{name}: {an!r} vs FD {fd!r}: rel err {err:.3e} > {FD_RTOL}"


@pytest.mark.parametrize("r, d, lead", [(1, 1, ()), (1, 3, (2,)), (2, 3, (2,)), (3, 3, (1, 2)), (2, 5, (2, 2))])
def test_vjp_equals_the_full_finite_difference_jacobian(r, d, lead):
    assert_vjp_is_the_jacobian(direft, r, d, lead, FD_RTOL)


def test_finite_difference_check_catches_a_dW2_without_the_bias():
    """The check has teeth: dW2 = (H W1ᵀ)ᵀ G, forgetting that Z = H W1ᵀ + b includes b, fails it."""
    rng = np.random.default_rng(8)
    p = direft.init(9, 3, rng, dtype=np.float64)
    h, dout = rng.standard_normal((4, 9)), rng.standard_normal((4, 9))
    wrong = (h @ p["W1"].T).T @ dout  # (r, d)
    errors = directional_fd_errors(direft.forward, {"h": h, **p}, {"W2": wrong}, dout, "W2")
    assert min(e for _, _, e in errors) > 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("r, d", [(1, 1), (4, 16), (16, 16), (8, 576)])
def test_init_paper_and_identity(r, d, dtype):
    paper = direft.init(d, r, np.random.default_rng(r + d), kind="paper", dtype=dtype)
    assert {k: (v.shape, v.dtype) for k, v in paper.items()} == {
        "W1": ((r, d), np.dtype(dtype)), "W2": ((r, d), np.dtype(dtype)), "b": ((r,), np.dtype(dtype))}
    bound = 1 / np.sqrt(d)
    assert np.all(np.abs(paper["W1"]) <= bound) and np.all(np.abs(paper["b"]) <= bound)
    assert orthonormality_error(paper["W2"]) <= (1e-12 if dtype == np.float64 else 1e-5)

    ident = direft.init(d, r, np.random.default_rng(1), kind="identity", dtype=dtype)
    assert not np.any(ident["W1"]) and not np.any(ident["b"])
    h = np.random.default_rng(2).standard_normal((3, d)).astype(dtype)
    assert np.array_equal(direft.forward(h, **ident), h)
    # ...and training can leave it: dW1 = Aᵀ H with A = G W2ᵀ is nonzero for a generic dout.
    dW1 = direft.vjp(h, **ident, dout=np.ones_like(h))[1]
    assert np.any(dW1 != 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"d": 3, "r": 4}, r"r=4 is greater than hidden size d=3"),
    ({"d": 3, "r": 1, "kind": "orthogonal"}, r"kind must be 'paper' or 'identity'"),
])
def test_init_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        direft.init(rng=np.random.default_rng(0), **kwargs)


GOOD = {"h": np.ones((2, 4)), "W1": np.ones((3, 4)), "W2": np.ones((3, 4)), "b": np.zeros(3)}
BAD_INPUTS = [
    ("h is a tuple", {"h": (1.0, 2.0, 3.0, 4.0)}, TypeError, r"h must be a numpy.ndarray, got tuple"),
    ("W1 is int", {"W1": np.ones((3, 4), dtype=np.int32)}, TypeError, r"W1 must have dtype float32 or float64"),
    ("W2 has the wrong shape", {"W2": np.ones((3, 5))}, ValueError, r"W2 must have shape \(3, 4\), got \(3, 5\)"),
    ("b has the wrong shape", {"b": np.zeros(2)}, ValueError, r"b must have shape \(3,\), got \(2,\)"),
    ("rank > d", {"W1": np.ones((5, 4)), "W2": np.ones((5, 4)), "b": np.zeros(5)}, ValueError,
     r"W1 has rank r=5 greater than hidden size d=4"),
    ("h has the wrong hidden size", {"h": np.ones((2, 3))}, ValueError, r"h must have shape \(\.\.\., 4\).*got \(2, 3\)"),
    ("mixed dtypes", {"W2": np.ones((3, 4), np.float32)}, TypeError, r"share one dtype, got .*W2=float32"),
    ("W2 has an inf", {"W2": np.full((3, 4), -np.inf)}, ValueError, r"W2 must be finite, found -inf at index \(0, 0\)"),
]


@pytest.mark.parametrize("what, change, exc, match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_forward_and_vjp_reject_bad_inputs(what, change, exc, match):
    args = GOOD | change
    with pytest.raises(exc, match=match):
        direft.forward(**args)
    with pytest.raises(exc, match=match):
        direft.vjp(**args, dout=np.ones((2, 4)))
