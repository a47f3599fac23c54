"""LoReFT: Φ(h) = h + Rᵀ(W h + b − R h), the edit of a rank-r subspace.

R (r, d) has orthonormal rows, W (r, d), b (r,). In row form, for a batch of
hidden states H (N, d):

    Δ   = H Wᵀ + b − H Rᵀ          (N, r)   target minus current subspace coordinates
    Out = H + Δ R                   (N, d)

With RRᵀ = I the subspace coordinates of the output are R Φ(h) = W h + b, and
nothing outside the row space of R moves.
"""

from __future__ import annotations

import numpy as np

from minireft import _check
from minireft.stiefel import random_stiefel

PARAMS = ("R", "W", "b")


def forward(h: np.ndarray, R: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Φ(h) = h + Rᵀ(W h + b − R h).

    h: (..., d); R, W: (r, d); b: (r,). Returns (..., d), same dtype as h.
    """
    d = _check.intervention(h, R=R, W=W, b=b)
    H = h.reshape(-1, d)  # (N, d)
    delta = H @ W.T + b - H @ R.T  # (N, r)
    return (H + delta @ R).reshape(h.shape)


def vjp(h, R, W, b, dout):
    """Vector-Jacobian products of Φ at (h, R, W, b) against the cotangent dout.

    h, dout: (..., d); R, W: (r, d); b: (r,). Returns (dh, dR, dW, db) with the
    shapes of (h, R, W, b). With G = dout (N, d), Δ = H Wᵀ + b − H Rᵀ, A = G Rᵀ:

        dh = G + A (W − R)        dW = Aᵀ H
        db = Σ_rows A             dR = Δᵀ G − Aᵀ H
    """
    d = _check.intervention(h, R=R, W=W, b=b)
    dout = _check.array("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    delta = H @ W.T + b - H @ R.T  # (N, r)
    A = G @ R.T  # (N, r): the cotangent of Δ, since Out = H + Δ R ⇒ dΔ = G Rᵀ
    # Δ depends on H through H(W − R)ᵀ, so its pullback is A(W − R); plus the skip G.
    dh = G + A @ (W - R)
    # ⟨A, H dWᵀ⟩ = ⟨Aᵀ H, dW⟩.
    dW = A.T @ H
    # b is broadcast over rows, so its cotangent sums A over them.
    db = A.sum(axis=0)
    # R enters twice: as the factor in Δ R (⟨G, Δ dR⟩ = ⟨Δᵀ G, dR⟩) and inside Δ
    # as −H Rᵀ (⟨A, −H dRᵀ⟩ = −⟨Aᵀ H, dR⟩).
    dR = delta.T @ G - A.T @ H
    return dh.reshape(h.shape), dR, dW, db


def init(d: int, r: int, rng: np.random.Generator, kind: str = "paper", dtype=np.float32) -> dict:
    """Initial parameters {R, W, b} for hidden size d and rank r.

    "paper":    R random orthonormal; W, b ~ U(−1/√d, 1/√d), as torch.nn.Linear(d, r).
    "identity": R random orthonormal; W = R; b = 0, so Φ(h) = h exactly.
    """
    d, r = _check.sizes(d, r)
    R = random_stiefel(r, d, rng)  # (r, d), float64
    if kind == "paper":
        bound = 1.0 / np.sqrt(d)
        W = rng.uniform(-bound, bound, size=(r, d))
        b = rng.uniform(-bound, bound, size=(r,))
    elif kind == "identity":
        W = R.copy()
        b = np.zeros(r)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"R": R.astype(dtype), "W": W.astype(dtype), "b": b.astype(dtype)}
