"""One optimizer step: AdamW for W, b (exactly torch.optim.AdamW) and Riemannian Adam for R."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given
from strategies import stiefel_cases

from minireft.optim import adamw_step, riemannian_adam_step
from minireft.stiefel import orthonormality_error, project_tangent, random_stiefel

ORTH_TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}

# ---------------------------------------------------------------- AdamW, by hand

LR, B1, B2, EPS = 0.1, 0.9, 0.999, 1e-8
THETA0 = np.array([1.0, -2.0])
G1 = np.array([0.5, -1.0])
G2 = np.array([-0.25, 2.0])


def test_adamw_two_steps_worked_by_hand_without_weight_decay():
    # Step 1 (t = 1), moments from zero:
    #   m1 = 0.9·0 + 0.1·g1            = [0.05, −0.1]
    #   v1 = 0.999·0 + 0.001·g1²       = [0.001·0.25, 0.001·1] = [0.00025, 0.001]
    #   m̂ = m1 / (1 − 0.9)            = [0.5, −1.0]   (= g1)
    #   √v1 / √(1 − 0.999)            = [√0.00025/√0.001, √0.001/√0.001] = [0.5, 1.0]   (= |g1|)
    #   θ1 = θ0 − 0.1 · m̂ / (|g1| + ε) = [1 − 0.1·0.5/(0.5 + 1e-8), −2 − 0.1·(−1)/(1 + 1e-8)]
    #      = [1 − 0.1·(1 − 2e-8), −2 + 0.1·(1 − 1e-8)] + O(ε²) = [0.900000002, −1.900000001]
    #   (the first Adam step is −lr·sign(g)·(1 − ε/|g|) per entry)
    theta1 = np.array([1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 1.0 / (1.0 + 1e-8)])
    p1, s1 = adamw_step(THETA0, G1, None, lr=LR)
    np.testing.assert_allclose(p1, theta1, rtol=1e-15, atol=0)
    assert s1["step"] == 1
    np.testing.assert_allclose(s1["exp_avg"], [0.05, -0.1], rtol=1e-15)
    np.testing.assert_allclose(s1["exp_avg_sq"], [0.00025, 0.001], rtol=1e-15)

    # Step 2 (t = 2):
    #   m2 = 0.9·m1 + 0.1·g2 = [0.045 − 0.025, −0.09 + 0.2]                     = [0.02, 0.11]
    #   v2 = 0.999·v1 + 0.001·g2² = [0.00024975 + 0.0000625, 0.000999 + 0.004]   = [0.00031225, 0.004999]
    #   1 − β1² = 1 − 0.81 = 0.19;  1 − β2² = 1 − 0.998001 = 0.001999
    #   m̂ = [0.02/0.19, 0.11/0.19]                          ≈ [0.105263157895, 0.578947368421]
    #   √v̂ = [√(0.00031225/0.001999), √(0.004999/0.001999)] ≈ [0.395225380702, 1.581376101750]
    #   θ2 = θ1 − 0.1 · m̂ / (√v̂ + 1e-8)                    ≈ θ1 − [0.026633703292, 0.036610352472]
    #      ≈ [0.873366298708, −1.936610353472]
    m_hat = np.array([0.02 / 0.19, 0.11 / 0.19])
    sqrt_v_hat = np.sqrt(np.array([0.00031225 / 0.001999, 0.004999 / 0.001999]))
    theta2 = theta1 - 0.1 * m_hat / (sqrt_v_hat + 1e-8)
    np.testing.assert_allclose(theta1, [0.900000002, -1.900000001], atol=1e-12)
    np.testing.assert_allclose(theta2, [0.873366298708, -1.936610353472], atol=1e-11)
    p2, s2 = adamw_step(p1, G2, s1, lr=LR)
    np.testing.assert_allclose(p2, theta2, rtol=1e-14, atol=0)
    assert s2["step"] == 2
    np.testing.assert_allclose(s2["exp_avg"], [0.02, 0.11], rtol=1e-14)
    np.testing.assert_allclose(s2["exp_avg_sq"], [0.00031225, 0.004999], rtol=1e-14)


def test_adamw_two_steps_worked_by_hand_with_weight_decay():
    # Decoupled decay, λ = 0.01: θ ← θ·(1 − lr·λ) = 0.999·θ first, then the same Adam update
    # as above (the moments see only g, never θ, so the updates are unchanged):
    #   θ1 = 0.999·[1, −2] − 0.1·[0.5/(0.5 + 1e-8), −1/(1 + 1e-8)]
    #      = [0.999 − 0.099999998, −1.998 + 0.099999999]           = [0.899000002, −1.898000001]
    #   θ2 = 0.999·θ1 − [0.026633703292, 0.036610352472]          ≈ [0.871467298706, −1.932712353471]
    upd1 = 0.1 * np.array([0.5 / (0.5 + 1e-8), -1.0 / (1.0 + 1e-8)])
    theta1 = 0.999 * THETA0 - upd1
    m_hat = np.array([0.02 / 0.19, 0.11 / 0.19])
    sqrt_v_hat = np.sqrt(np.array([0.00031225 / 0.001999, 0.004999 / 0.001999]))
    theta2 = 0.999 * theta1 - 0.1 * m_hat / (sqrt_v_hat + 1e-8)
    np.testing.assert_allclose(theta1, [0.899000002, -1.898000001], atol=1e-12)
    np.testing.assert_allclose(theta2, [0.871467298706, -1.932712353471], atol=1e-11)
    p1, s1 = adamw_step(THETA0, G1, None, lr=LR, weight_decay=0.01)
    p2, _ = adamw_step(p1, G2, s1, lr=LR, weight_decay=0.01)
    np.testing.assert_allclose(p1, theta1, rtol=1e-15, atol=0)
    np.testing.assert_allclose(p2, theta2, rtol=1e-14, atol=0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("betas, eps", [((0.9, 0.999), 1e-8), ((0.5, 0.9), 1e-3)])
def test_adamw_matches_torch(weight_decay, betas, eps):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((3, 5))
    grads = [rng.standard_normal((3, 5)) * 10.0 ** rng.integers(-3, 3) for _ in range(20)]
    tp = torch.nn.Parameter(torch.tensor(theta, dtype=torch.float64))
    opt = torch.optim.AdamW([tp], lr=0.01, betas=betas, eps=eps, weight_decay=weight_decay)
    p, state = theta, None
    for t, g in enumerate(grads, 1):
        tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        p, state = adamw_step(p, g, state, lr=0.01, betas=betas, eps=eps, weight_decay=weight_decay)
        expected = tp.detach().numpy()
        err = np.max(np.abs(p - expected)) / np.max(np.abs(expected))
        assert err <= 1e-13, f"step {t}: relative difference from torch.optim.AdamW {err:.3e}"
        # torch forms m by lerp, m + (1 − β1)(g − m), not β1 m + (1 − β1) g: equal up to rounding,
        # so compare against the scale of each moment, not entry by entry.
        for key in ("exp_avg", "exp_avg_sq"):
            want = opt.state[tp][key].numpy()
            np.testing.assert_allclose(state[key], want, rtol=0, atol=1e-13 * np.max(np.abs(want)))


def test_adamw_keeps_float32():
    p, _ = adamw_step(np.ones(3, np.float32), np.ones(3, np.float32), None, lr=0.1, weight_decay=0.1)
    assert p.dtype == np.float32


# ---------------------------------------------------------------- Riemannian Adam

LONG_STEPS = 10_000


@pytest.mark.parametrize("retraction", ["polar", "qr"])
@pytest.mark.parametrize("grad_scale", [1.0, 1e6])
def test_riemannian_adam_stays_on_the_manifold_for_10000_steps(retraction, grad_scale):
    """lr = 1 and gradients of size up to 1e6: every step is retracted, so errors never
    accumulate; the bound holds after each of the 10,000 steps, not only at the end."""
    rng = np.random.default_rng(123)
    R = random_stiefel(4, 16, rng)
    state, worst = None, 0.0
    grads = grad_scale * rng.standard_normal((LONG_STEPS, 4, 16))
    for g in grads:
        R, state = riemannian_adam_step(R, g, state, lr=1.0, retraction=retraction)
        worst = max(worst, orthonormality_error(R))
    final = orthonormality_error(R)
    print(f"\n  riemannian_adam_step {retraction:5s} |grad|~{grad_scale:.0e} lr=1: after {LONG_STEPS} steps "
              f"max|RRᵀ − I| final {final:.2e}, worst {worst:.2e}")
    assert state["step"] == LONG_STEPS
    assert worst <= 1e-12, f"{retraction}, grad scale {grad_scale}: worst orthonormality error {worst:.3e}"


@pytest.mark.parametrize("retraction", ["polar", "qr"])
def test_riemannian_adam_stays_on_the_manifold_in_float32(retraction):
    rng = np.random.default_rng(321)
    R = random_stiefel(4, 16, rng, dtype=np.float32)
    state, worst = None, 0.0
    for g in (1e6 * rng.standard_normal((2000, 4, 16))).astype(np.float32):
        R, state = riemannian_adam_step(R, g, state, lr=1.0, retraction=retraction)
        worst = max(worst, orthonormality_error(R))
    print(f"\n  riemannian_adam_step {retraction:5s} float32, 2000 steps: worst max|RRᵀ − I| {worst:.2e}")
    assert R.dtype == np.float32 and state["exp_avg"].dtype == np.float32
    assert worst <= 1e-5


@given(case=stiefel_cases(max_d=64))
def test_riemannian_adam_step_is_on_the_manifold_and_transports_m(case):
    """One step from a fresh state: R' on St(r, d) and m transported to the tangent space at R'."""
    R, g = case.R(), case.ambient()
    R1, s1 = riemannian_adam_step(R, g, None, lr=0.5, retraction="qr" if case.seed % 2 else "polar")
    assert R1.dtype == R.dtype and R1.shape == R.shape
    assert orthonormality_error(R1) <= ORTH_TOL[case.dtype]
    m = s1["exp_avg"].astype(np.float64)
    R64 = R1.astype(np.float64)
    residual = np.abs(m @ R64.T + R64 @ m.T).max() if m.size else 0.0
    assert residual <= 1e-4 * max(1.0, np.abs(m).max()) if case.dtype == np.float32 else residual <= 1e-12


@pytest.mark.parametrize("retraction", ["polar", "qr"])
def test_first_step_is_a_tangent_sign_step(retraction):
    """At t = 1, m̂ = g and √v̂ = |g|, so ξ = −lr·P_R(g / (|g| + ε)); for small lr, R' = R + ξ + O(lr²).
    (The QR retraction would move R at first order if ξ had a normal part; the polar one absorbs it.)"""
    rng = np.random.default_rng(1)
    R = random_stiefel(3, 8, rng)
    grad = rng.standard_normal((3, 8))
    g = project_tangent(R, grad)
    lr = 1e-5
    xi = -lr * project_tangent(R, g / (np.abs(g) + 1e-8))
    R1, state = riemannian_adam_step(R, grad, None, lr=lr, retraction=retraction)
    assert np.max(np.abs(R1 - (R + xi))) <= 10 * lr**2
    np.testing.assert_allclose(state["exp_avg_sq"], 0.001 * g * g, rtol=1e-12)


@pytest.mark.parametrize("retraction", ["polar", "qr"])
def test_riemannian_adam_follows_its_formulas_step_by_step(retraction):
    """Five steps against the algorithm written out again here, line by line:
        g = P_R(∇) ; m = β1 m + (1 − β1) g ; v = β2 v + (1 − β2) g⊙g
        ξ = −lr · P_R(m̂ / (√v̂ + ε)) ; R' = retract(R, ξ) ; m ← P_R'(m)"""
    rng = np.random.default_rng(6)
    R = random_stiefel(3, 9, rng)
    b1, b2, eps, lr = 0.8, 0.95, 1e-6, 0.1

    def P(X, G):  # G − sym(G Xᵀ) X
        S = G @ X.T
        return G - 0.5 * (S + S.T) @ X

    def retract(X, xi):
        if retraction == "polar":
            U, _, Vt = np.linalg.svd(X + xi, full_matrices=False)
            return U @ Vt
        Q, T = np.linalg.qr((X + xi).T)
        return (Q * np.where(np.diag(T) < 0, -1.0, 1.0)).T

    mine, m, v, state = R.copy(), np.zeros_like(R), np.zeros_like(R), None
    for t in range(1, 6):
        grad = rng.standard_normal(R.shape)
        g = P(mine, grad)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        xi = -lr * P(mine, (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
        mine = retract(mine, xi)
        m = P(mine, m)
        R, state = riemannian_adam_step(R, grad, state, lr=lr, betas=(b1, b2), eps=eps, retraction=retraction)
        np.testing.assert_allclose(R, mine, rtol=0, atol=1e-12, err_msg=f"R after step {t}")
        np.testing.assert_allclose(state["exp_avg"], m, rtol=0, atol=1e-12, err_msg=f"m after step {t}")
        np.testing.assert_allclose(state["exp_avg_sq"], v, rtol=1e-12, atol=0, err_msg=f"v after step {t}")
        assert state["step"] == t


def test_riemannian_adam_finds_the_top_eigenspace():
    """It optimises: minimising −tr(R A Rᵀ) over St(r, d) reaches the sum of the r largest
    eigenvalues of a symmetric A (Ky Fan), to 1e-3 relative, in 2,000 steps."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((12, 12))
    A = X @ X.T / 12  # (d, d) symmetric PSD
    best = np.sum(np.linalg.eigvalsh(A)[-3:])
    R, state = random_stiefel(3, 12, rng), None
    for t in range(2000):
        lr = 0.05 * (1 - t / 2000) + 1e-4
        R, state = riemannian_adam_step(R, -2 * R @ A, state, lr=lr)  # ∇_R(−tr(R A Rᵀ)) = −2 R A
    got = np.trace(R @ A @ R.T)
    assert abs(got - best) <= 1e-3 * best, f"tr(R A Rᵀ) = {got}, optimum {best}"
    assert orthonormality_error(R) <= 1e-12


def test_riemannian_adam_has_no_weight_decay():
    """Decay would shrink R off the manifold (and in pyreft's Householder parametrisation zeroes it):
    the argument does not exist."""
    assert "weight_decay" not in inspect.signature(riemannian_adam_step).parameters
    R = random_stiefel(2, 4, np.random.default_rng(0))
    with pytest.raises(TypeError, match="weight_decay"):
        riemannian_adam_step(R, np.ones((2, 4)), None, lr=0.1, weight_decay=0.01)


# ---------------------------------------------------------------- state and purity


@pytest.mark.parametrize("step, kwargs", [
    (adamw_step, {"weight_decay": 0.1}),
    (riemannian_adam_step, {"retraction": "polar"}),
    (riemannian_adam_step, {"retraction": "qr"}),
])
def test_steps_are_pure_and_none_starts_fresh(step, kwargs):
    rng = np.random.default_rng(4)
    R = random_stiefel(3, 7, rng)
    g1, g2 = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    R_before, g1_before = R.copy(), g1.copy()
    p1, s1 = step(R, g1, None, lr=0.1, **kwargs)
    assert np.array_equal(R, R_before) and np.array_equal(g1, g1_before), "inputs were modified"
    # None is the zero state at step 0
    zero = {"step": 0, "exp_avg": np.zeros_like(R), "exp_avg_sq": np.zeros_like(R)}
    q1, _ = step(R, g1, zero, lr=0.1, **kwargs)
    assert np.array_equal(p1, q1)
    assert not np.any(zero["exp_avg"]) and zero["step"] == 0, "the state passed in was modified"
    # a state is consumed, not mutated: stepping twice from it gives the same result
    s1_copy = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s1.items()}
    a, _ = step(p1, g2, s1, lr=0.1, **kwargs)
    b, _ = step(p1, g2, s1, lr=0.1, **kwargs)
    assert np.array_equal(a, b)
    assert all(np.array_equal(s1[k], s1_copy[k]) for k in s1)
    # the same call twice from None gives the same result (deterministic)
    assert np.array_equal(step(R, g1, None, lr=0.1, **kwargs)[0], p1)


def test_zero_learning_rate_changes_nothing():
    R = random_stiefel(3, 7, np.random.default_rng(5))
    g = np.ones((3, 7))
    assert np.allclose(riemannian_adam_step(R, g, None, lr=0.0)[0], R, atol=1e-15)
    assert np.array_equal(adamw_step(R, g, None, lr=0.0, weight_decay=0.5)[0], R)


BAD = [
    (adamw_step, (np.ones(3), np.ones(4), None), {"lr": 0.1}, ValueError, r"grad must have shape \(3,\), got \(4,\)"),
    (adamw_step, (np.ones(3), np.ones(3, np.float32), None), {"lr": 0.1}, TypeError, r"param=float64, grad=float32"),
    (adamw_step, ([1.0], np.ones(1), None), {"lr": 0.1}, TypeError, r"param must be a numpy.ndarray"),
    (adamw_step, (np.ones(3), np.array([1.0, np.nan, 0.0]), None), {"lr": 0.1}, ValueError, r"grad must be finite, found nan at index \(1,\)"),
    (adamw_step, (np.ones(3), np.ones(3), None), {"lr": -1.0}, ValueError, r"lr must be a finite number >= 0, got -1.0"),
    (adamw_step, (np.ones(3), np.ones(3), None), {"lr": 0.1, "betas": (0.9, 1.0)}, ValueError, r"betas must be two numbers in \[0, 1\)"),
    (adamw_step, (np.ones(3), np.ones(3), None), {"lr": 0.1, "eps": 0.0}, ValueError, r"eps must be > 0"),
    (adamw_step, (np.ones(3), np.ones(3), None), {"lr": 0.1, "weight_decay": -0.1}, ValueError, r"weight_decay must be >= 0"),
    (adamw_step, (np.ones(3), np.ones(3), {"step": 1}), {"lr": 0.1}, ValueError, r"state is missing 'exp_avg'"),
    (adamw_step, (np.ones(3), np.ones(3), {"step": 1, "exp_avg": np.ones(2), "exp_avg_sq": np.ones(3)}), {"lr": 0.1},
     ValueError, r"state\['exp_avg'\] must have shape \(3,\), got \(2,\)"),
    (riemannian_adam_step, (np.eye(2, 4), np.ones((2, 3)), None), {"lr": 0.1}, ValueError, r"grad must have shape \(2, 4\), got \(2, 3\)"),
    (riemannian_adam_step, (np.eye(2, 4), np.ones(4), None), {"lr": 0.1}, ValueError, r"grad must have at least 2 dimension\(s\), got shape \(4,\)"),
    (riemannian_adam_step, (np.eye(5, 4), np.ones((5, 4)), None), {"lr": 0.1}, ValueError, r"rank r=5 greater than hidden size d=4"),
    (riemannian_adam_step, (np.eye(2, 4), np.ones((2, 4)), None), {"lr": 0.1, "retraction": "cayley"}, ValueError,
     r"retraction must be one of \['polar', 'qr'\], got 'cayley'"),
    (riemannian_adam_step, (np.eye(2, 4), np.full((2, 4), np.inf), None), {"lr": 0.1}, ValueError, r"grad must be finite"),
]


@pytest.mark.parametrize("step, args, kwargs, exc, match", BAD, ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_are_rejected(step, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        step(*args, **kwargs)
