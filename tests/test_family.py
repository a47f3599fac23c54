"""The rest of the ReFT family in the spec: NoReFT, ConsReFT, LobiReFT, orthogonal DiReFT.

    noreft        Φ(h) = h + W2ᵀ(W1 h + b − W2 h)
    consreft      Φ(h) = h + Rᵀ(b − R h)         R Rᵀ = I
    lobireft      Φ(h) = h + Rᵀ b                R Rᵀ = I
    ortho_direft  Φ(h) = h + Rᵀ(W h + b)         R Rᵀ = I

Forward tolerances are the deterministic bound |fl(A B) − A B| <= γ_n |A| |B| with
γ_n <= 1.01·n·u (Higham, Thm 3.5), applied to the formula with every entry replaced by its
absolute value: no statistical constant, so nothing here can flake, and an error of a
wrong formula (a sign, a missing b) is O(1), far above it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from strategies import (
    EDGE_CASES,
    FAMILY,
    assert_close,
    assert_vjp_is_the_jacobian,
    cases,
    directional_fd_errors,
    edit_cases,
    unit_roundoff,
    with_edges,
)

from minireft import (
    ReftConfig,
    consreft,
    direft,
    edit,
    edit_vjp,
    lobireft,
    loreft,
    noreft,
    ortho_direft,
)
from minireft.edit import edited_positions
from minireft.stiefel import orthonormality_error

NEW = ("noreft", "consreft", "lobireft", "ortho_direft")
IDENTITY = ("noreft", "lobireft", "ortho_direft")  # ConsReFT has none (SPEC §3a.2)
FD_RTOL = 1e-8


def _rows(case, h, p):
    """(H (N, d), {param: float64 array}) for an independent float64 evaluation."""
    return h.astype(np.float64).reshape(-1, case.d), {k: v.astype(np.float64) for k, v in p.items()}


def reference(kind, H, p, absolute=False):
    """Φ(H) − H per kind, by einsum in float64; with absolute=True every entry is replaced by
    its absolute value and − by +: the magnitude that bounds the rounding error."""
    f = np.abs if absolute else (lambda x: x)
    sign = 1.0 if absolute else -1.0
    H = f(H)
    q = {k: f(v) for k, v in p.items()}
    if kind == "noreft":
        delta = np.einsum("nd,rd->nr", H, q["W1"]) + q["b"] + sign * np.einsum("nd,rd->nr", H, q["W2"])
        return np.einsum("nr,rd->nd", delta, q["W2"])
    if kind == "consreft":
        return np.einsum("nr,rd->nd", q["b"] + sign * np.einsum("nd,rd->nr", H, q["R"]), q["R"])
    if kind == "lobireft":
        return np.broadcast_to(np.einsum("r,rd->d", q["b"], q["R"]), H.shape)
    return np.einsum("nr,rd->nd", np.einsum("nd,rd->nr", H, q["W"]) + q["b"], q["R"])


def forward_atol(case, kind, H, p) -> np.ndarray:
    """γ_{d+r+2} · (|H| + |Φ(H) − H| with absolute values): the forward's rounding bound."""
    n = case.d + case.r + 2
    return 1.01 * n * unit_roundoff(case.dtype) * (np.abs(H) + reference(kind, H, p, absolute=True))


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("kind", NEW)
@with_edges(EDGE_CASES)
@given(case=cases())
def test_forward_is_the_formula(kind, case):
    """Φ(h) against an independent float64 einsum, within the deterministic rounding bound."""
    h, p = case.h(), case.params(kind)
    out = FAMILY[kind].forward(h, **p)
    assert out.dtype == h.dtype and out.shape == h.shape
    H, q = _rows(case, h, p)
    assert_close(out.reshape(-1, case.d), H + reference(kind, H, q), atol=forward_atol(case, kind, H, q),
                 what=f"{kind} forward", case=case)


@pytest.mark.parametrize("kind", IDENTITY)
@with_edges(EDGE_CASES)
@given(case=cases())
def test_identity_parameters_are_exactly_the_identity(kind, case):
    """NoReFT W1 = W2, b = 0: Δ = x − x = 0; LobiReFT b = 0: Rᵀ0 = 0; orthogonal DiReFT
    W = 0, b = 0: Z = 0. Each adds an exact zero, so Φ(h) = h bit for bit."""
    h, p = case.h(), case.params(kind)
    zero = {"b": np.zeros_like(p["b"])}
    if kind == "noreft":
        zero["W1"] = p["W2"]
    elif kind == "ortho_direft":
        zero["W"] = np.zeros_like(p["W"])
    assert np.array_equal(FAMILY[kind].forward(h, **(p | zero)), h)


@with_edges(EDGE_CASES)
@given(case=cases())
def test_consreft_sets_the_subspace_coordinates_to_b(case):
    """R Φ(h) = R h + RRᵀ(b − R h) = b, and (I − RᵀR)(Φ(h) − h) = (Rᵀ − Rᵀ)(b − R h) = 0."""
    h, p = case.h(), case.consreft()
    H, q = _rows(case, h, p)
    out = consreft.forward(h, **p).astype(np.float64).reshape(-1, case.d)
    atol = forward_atol(case, "consreft", H, q).max(axis=1, keepdims=True) * np.sqrt(case.d)
    R = q["R"]
    assert_close(out @ R.T, np.broadcast_to(q["b"], (len(H), case.r)), atol=atol, what="R Φ(h)", case=case)
    E = out - H
    assert_close(E - (E @ R.T) @ R, np.zeros_like(E), atol=atol, what="(I − RᵀR)(Φ(h) − h)", case=case)


@with_edges(EDGE_CASES)
@given(case=cases())
def test_lobireft_shift_is_the_same_for_every_h_and_lies_in_the_row_space(case):
    """Φ(h) − h = Rᵀ b for every h: R (Φ(h) − h) = b and (I − RᵀR)(Φ(h) − h) = 0."""
    h, p = case.h(), case.lobireft()
    H, q = _rows(case, h, p)
    E = lobireft.forward(h, **p).astype(np.float64).reshape(-1, case.d) - H
    atol = forward_atol(case, "lobireft", H, q).max(axis=1, keepdims=True) * np.sqrt(case.d)
    R = q["R"]
    assert_close(E, np.broadcast_to(q["b"] @ R, E.shape), atol=atol, what="Φ(h) − h", case=case)
    assert_close(E @ R.T, np.broadcast_to(q["b"], (len(H), case.r)), atol=atol, what="R(Φ(h) − h)", case=case)
    assert_close(E - (E @ R.T) @ R, np.zeros_like(E), atol=atol, what="(I − RᵀR)(Φ(h) − h)", case=case)


@with_edges(EDGE_CASES)
@given(case=cases())
def test_ortho_direft_edit_sets_the_added_coordinates(case):
    """R (Φ(h) − h) = W h + b and (I − RᵀR)(Φ(h) − h) = 0, since Φ(h) − h = Rᵀ(W h + b)."""
    h, p = case.h(), case.ortho_direft()
    H, q = _rows(case, h, p)
    E = ortho_direft.forward(h, **p).astype(np.float64).reshape(-1, case.d) - H
    atol = forward_atol(case, "ortho_direft", H, q).max(axis=1, keepdims=True) * np.sqrt(case.d)
    R = q["R"]
    assert_close(E @ R.T, H @ q["W"].T + q["b"], atol=atol, what="R(Φ(h) − h)", case=case)
    assert_close(E - (E @ R.T) @ R, np.zeros_like(E), atol=atol, what="(I − RᵀR)(Φ(h) − h)", case=case)


@with_edges(EDGE_CASES)
@given(case=cases())
def test_special_cases_of_loreft_and_direft(case):
    """NoReFT is LoReFT with W2 for R and W1 for W; ConsReFT is LoReFT with W = 0; orthogonal
    DiReFT is DiReFT with R for W2; LobiReFT is DiReFT with W1 = 0. Forward and VJP agree
    with the older modules (same products, so to a few roundings of |Φ(h)|)."""
    h, dout = case.h(), case.dout()
    R, W, b = (case.loreft()[k] for k in ("R", "W", "b"))
    zero = np.zeros_like(W)
    pairs = [  # (new, its args, old, its args, old output index of each new output)
        (noreft, (h, W, R, b), loreft, (h, R, W, b), (0, 2, 1, 3)),
        (consreft, (h, R, b), loreft, (h, R, zero, b), (0, 1, 3)),
        (ortho_direft, (h, R, W, b), direft, (h, W, R, b), (0, 2, 1, 3)),
        (lobireft, (h, R, b), direft, (h, zero, R, b), (0, 2, 3)),
    ]
    u = unit_roundoff(case.dtype)
    for new, args, old, old_args, order in pairs:
        want = old.forward(*old_args)
        tol = 8 * (case.d + case.r) * u * (1 + np.abs(want).max())
        assert_close(new.forward(*args), want, atol=tol, what=f"{new.__name__} forward", case=case)
        got, ref = new.vjp(*args, dout), old.vjp(*old_args, dout)
        for i, j in enumerate(order):
            scale = 1 + np.abs(ref[j]).max()
            assert_close(got[i], ref[j], atol=8 * (case.d + case.r) * u * scale * max(1, len(h.reshape(-1))),
                         what=f"{new.__name__} vjp output {i}", case=case)


# ---------------------------------------------------------------- VJP


@pytest.mark.parametrize("kind", NEW)
@with_edges(EDGE_CASES, dtype=np.float64)
@given(case=cases(max_d=128, dtype=np.float64))
def test_vjp_matches_central_differences(kind, case):
    """⟨dout, ∂Φ/∂x · V⟩ by central differences equals ⟨vjp_x(dout), V⟩ for every input x.
    Each Φ is at most quadratic in each input, so the central difference is exact but for
    rounding (SPEC §2.2)."""
    spec = FAMILY[kind]
    h, dout, p = case.h(), case.dout(), case.params(kind)
    res = spec.vjp(h, *(p[k] for k in spec.PARAMS), dout)
    assert len(res) == 1 + len(spec.PARAMS)
    grads = dict(zip(("h", *spec.PARAMS), res))
    for name, g in grads.items():
        ref = h if name == "h" else p[name]
        assert g.shape == ref.shape and g.dtype == ref.dtype, f"{kind} d{name}: {g.shape} {g.dtype}"
    args = {"h": h, **p}
    for name in grads:
        # A floor for a gradient that is zero in exact arithmetic (ConsReFT at r = d is
        # Φ(h) = Rᵀ b, so dh = G − G RᵀR = 0): both sides are then rounding of terms of size
        # ‖dout‖·‖V‖·(1 + |h| + |b|), ‖V‖ ≈ √size.
        floor = 1e-12 * np.linalg.norm(dout) * np.sqrt(args[name].size) * (
            1 + np.abs(h).max() + np.abs(p["b"]).max())
        for fd, an, err in directional_fd_errors(spec.forward, args, grads, dout, name, seed=case.seed % 1000):
            assert err <= FD_RTOL or abs(fd - an) <= floor, (
                f"[{case}] {kind} d{name}: {an!r} vs FD {fd!r}: rel err {err:.3e}")


@pytest.mark.parametrize("kind", NEW)
@pytest.mark.parametrize("r, d, lead", [(1, 1, ()), (1, 3, (2,)), (2, 3, (2,)), (3, 3, (1, 2)), (2, 5, (2, 2))])
def test_vjp_equals_the_full_finite_difference_jacobian(kind, r, d, lead):
    assert_vjp_is_the_jacobian(FAMILY[kind], r, d, lead, FD_RTOL)


@pytest.mark.parametrize("wrong", ["lobireft dR from one row", "consreft dh without −A R",
                                   "noreft dW2 without −Aᵀ H"])
def test_finite_difference_check_catches_a_wrong_vjp(wrong):
    """The check has teeth: a plausible wrong VJP (a missed sum over rows, a missed term) fails."""
    rng = np.random.default_rng(8)
    h, dout = rng.standard_normal((4, 9)), rng.standard_normal((4, 9))
    if wrong.startswith("lobireft"):
        p = lobireft.init(9, 3, rng, dtype=np.float64)
        spec, name, bad = lobireft, "R", np.outer(p["b"], dout[0])
    elif wrong.startswith("consreft"):
        p = consreft.init(9, 3, rng, dtype=np.float64)
        spec, name, bad = consreft, "h", dout.copy()
    else:
        p = noreft.init(9, 3, rng, dtype=np.float64)
        delta = h @ p["W1"].T + p["b"] - h @ p["W2"].T
        spec, name, bad = noreft, "W2", delta.T @ dout
    errors = directional_fd_errors(spec.forward, {"h": h, **p}, {name: bad}, dout, name)
    assert min(e for _, _, e in errors) > 1e-3


# ---------------------------------------------------------------- init


@pytest.mark.parametrize("kind", NEW)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("r, d", [(1, 1), (4, 16), (16, 16), (8, 576)])
def test_init_paper(kind, r, d, dtype):
    spec = FAMILY[kind]
    p = spec.init(d, r, np.random.default_rng(r + d), kind="paper", dtype=dtype)
    shapes = {k: ((r,) if k == "b" else (r, d), np.dtype(dtype)) for k in spec.PARAMS}
    assert {k: (v.shape, v.dtype) for k, v in p.items()} == shapes
    if "R" in p:  # every orthonormal factor is named R: the optimizer's Stiefel rule
        assert orthonormality_error(p["R"]) <= (1e-12 if dtype == np.float64 else 1e-5)
    bound = 1 / np.sqrt(d)
    for k, v in p.items():
        if k in ("W", "W1", "W2") or (k == "b" and kind in ("noreft", "ortho_direft")):
            assert np.all(np.abs(v) <= bound), f"{kind} {k}: as nn.Linear(d, r)"
    if kind in ("consreft", "lobireft"):  # pyreft's torch.rand(r)
        assert np.all((p["b"] >= 0) & (p["b"] <= 1))
    h = np.random.default_rng(2).standard_normal((3, d)).astype(dtype)
    assert not np.array_equal(spec.forward(h, **p), h), "the paper init edits"


@pytest.mark.parametrize("kind", IDENTITY)
@pytest.mark.parametrize("r, d", [(1, 1), (4, 16), (16, 16), (8, 576)])
def test_init_identity_is_exact_and_trainable(kind, r, d):
    """Φ(h) = h bit for bit at the identity init, and some parameter gradient is nonzero."""
    spec = FAMILY[kind]
    p = spec.init(d, r, np.random.default_rng(1), kind="identity")
    h = np.random.default_rng(2).standard_normal((3, d)).astype(np.float32)
    assert np.array_equal(spec.forward(h, **p), h)
    grads = spec.vjp(h, *(p[k] for k in spec.PARAMS), np.ones_like(h))
    assert np.array_equal(grads[0], np.ones_like(h)), "dh = dout at the identity"
    assert any(np.any(g != 0) for g in grads[1:])


def test_consreft_refuses_the_identity_init_with_the_reason():
    with pytest.raises(ValueError, match=r"ConsReFT has no identity init.*RᵀR = 0.*init='paper'"):
        consreft.init(8, 2, np.random.default_rng(0), kind="identity")
    with pytest.raises(ValueError, match=r"ConsReFT has no identity init"):
        ReftConfig(layers=[0], intervention="consreft", init="identity")
    assert ReftConfig(layers=[0], intervention="consreft").param_names == ("R", "b")


@pytest.mark.parametrize("kind", NEW)
@pytest.mark.parametrize("kwargs, match", [
    ({"d": 3, "r": 4}, r"r=4 is greater than hidden size d=3"),
    ({"d": 3, "r": 1, "kind": "orthogonal"}, r"kind must be 'paper'"),
    ({"d": 0, "r": 1}, r"d must be a positive integer"),
])
def test_init_rejects_bad_arguments(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FAMILY[kind].init(rng=np.random.default_rng(0), **kwargs)


# ---------------------------------------------------------------- argument checks


def good_args(kind) -> dict:
    first = FAMILY[kind].PARAMS[0]
    return {"h": np.ones((2, 4)), **{k: (np.zeros(3) if k == "b" else np.ones((3, 4))) for k in FAMILY[kind].PARAMS},
            "_first": first, "_last_matrix": FAMILY[kind].PARAMS[-2]}


BAD = [
    ("h is a list", lambda a: {"h": [1.0, 2.0]}, TypeError, r"h must be a numpy.ndarray, got list"),
    ("first factor is int", lambda a: {a["_first"]: np.ones((3, 4), np.int64)}, TypeError,
     r"must have dtype float32 or float64"),
    ("last factor has the wrong shape", lambda a: {a["_last_matrix"]: np.ones((3, 5))}, ValueError,
     r"must have shape \(3, 4\), got \(3, 5\)"),
    ("b has the wrong shape", lambda a: {"b": np.zeros(2)}, ValueError, r"b must have shape \(3,\), got \(2,\)"),
    ("h has the wrong hidden size", lambda a: {"h": np.ones((2, 3))}, ValueError,
     r"h must have shape \(\.\.\., 4\)"),
    ("mixed dtypes", lambda a: {"b": np.zeros(3, np.float32)}, TypeError, r"share one dtype, got .*b=float32"),
    ("a factor has an inf", lambda a: {a["_last_matrix"]: np.full((3, 4), np.inf)}, ValueError,
     r"must be finite, found inf at index \(0, 0\)"),
    ("rank > d", lambda a: {k: (np.zeros(5) if k == "b" else np.ones((5, 4))) for k in a if not k.startswith("_")
                            and k != "h"}, ValueError, r"has rank r=5 greater than hidden size d=4"),
]


@pytest.mark.parametrize("kind", NEW)
@pytest.mark.parametrize("what, change, exc, match", BAD, ids=[b[0] for b in BAD])
def test_forward_and_vjp_reject_bad_inputs(kind, what, change, exc, match):
    args = good_args(kind)
    args = {k: v for k, v in (args | change(args)).items() if not k.startswith("_")}
    spec = FAMILY[kind]
    if what == "last factor has the wrong shape" and len(spec.PARAMS) == 2:
        match = r"h must have shape \(\.\.\., 5\)"  # R alone sets d: h disagrees with it
    with pytest.raises(exc, match=match):
        spec.forward(**args)
    with pytest.raises(exc, match=match):
        spec.vjp(**args, dout=np.ones((2, 4)))


# ---------------------------------------------------------------- the in-model edit


@given(case=edit_cases(interventions=NEW))
def test_edit_applies_the_configs_intervention_at_the_rules_positions(case):
    """edit dispatches on config.intervention: edited vectors are that Φ, the rest is h's."""
    h, params = case.h(), case.params()
    mask = case.mask()
    out = edit(h, mask, case.prompt_lengths(), case.config, params)
    math = FAMILY[case.config.intervention]
    edited = np.zeros(h.shape[:2], dtype=bool)
    u = unit_roundoff(case.dtype)
    for group, per_row in edited_positions(mask, case.prompt_lengths(), case.config).items():
        for b, cols in enumerate(per_row):
            for t in cols:
                edited[b, t] = True
                want = math.forward(h[b, t], *(params[group][k] for k in math.PARAMS))
                assert_close(out[b, t], want, atol=64 * u * (1 + np.abs(want).max()), what=group)
    assert np.array_equal(out[~edited], h[~edited])


@given(case=edit_cases(interventions=IDENTITY))
def test_edit_with_the_identity_init_changes_nothing(case):
    h = case.h()
    out = edit(h, case.mask(), case.prompt_lengths(), case.config, case.params("identity"))
    assert np.array_equal(out, h)


@given(case=edit_cases(dtype=np.float64, interventions=NEW))
def test_edit_vjp_matches_central_differences(case):
    h, dout, params = case.h(), case.dout(), case.params()
    mask, lengths = case.mask(), case.prompt_lengths()
    dh, grads = edit_vjp(h, mask, lengths, case.config, params, dout)

    def f(h, **flat):
        nested = {g: {k: flat[f"{g}.{k}"] for k in params[g]} for g in params}
        return edit(h, mask, lengths, case.config, nested)

    flat = {f"{g}.{k}": v for g in params for k, v in params[g].items()}
    flat_grads = {"h": dh, **{f"{g}.{k}": v for g in grads for k, v in grads[g].items()}}
    for name in flat_grads:
        for fd, an, err in directional_fd_errors(f, {"h": h, **flat}, flat_grads, dout, name, n_dirs=2):
            assert err <= FD_RTOL, f"{case.config.intervention} d{name}: {an!r} vs FD {fd!r}: {err:.3e}"
