"""NoReFT: Φ(h) = h + W2ᵀ(W1 h + b − W2 h), LoReFT without the orthogonality constraint.

W1, W2 (r, d), b (r,). In row form, for a batch of hidden states H (N, d):

    Δ   = H W1ᵀ + b − H W2ᵀ        (N, r)   target minus current coordinates along W2
    Out = H + Δ W2                  (N, d)

W2 plays LoReFT's R but is an ordinary parameter (AdamW, no manifold): R Φ(h) = W1 h + b
holds only while W2 happens to have orthonormal rows.
"""

from __future__ import annotations

import numpy as np

from minireft import _check

PARAMS = ("W1", "W2", "b")
INITS = ("paper", "identity")


def forward(h: np.ndarray, W1: np.ndarray, W2: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Φ(h) = h + W2ᵀ(W1 h + b − W2 h).

    h: (..., d); W1, W2: (r, d); b: (r,). Returns (..., d), same dtype as h.
    """
    d = _check.intervention(h, W1=W1, W2=W2, b=b)
    H = h.reshape(-1, d)  # (N, d)
    delta = H @ W1.T + b - H @ W2.T  # (N, r)
    return (H + delta @ W2).reshape(h.shape)


def vjp(h, W1, W2, b, dout):
    """Vector-Jacobian products of Φ at (h, W1, W2, b) against the cotangent dout.

    h, dout: (..., d); W1, W2: (r, d); b: (r,). Returns (dh, dW1, dW2, db) with the
    shapes of (h, W1, W2, b). With G = dout (N, d), Δ = H W1ᵀ + b − H W2ᵀ, A = G W2ᵀ:

        dh = G + A (W1 − W2)      dW1 = Aᵀ H
        db = Σ_rows A             dW2 = Δᵀ G − Aᵀ H
    """
    d = _check.intervention(h, W1=W1, W2=W2, b=b)
    dout = _check.array("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    delta = H @ W1.T + b - H @ W2.T  # (N, r)
    A = G @ W2.T  # (N, r): the cotangent of Δ, since Out = H + Δ W2 ⇒ dΔ = G W2ᵀ
    # Δ depends on H through H(W1 − W2)ᵀ, so its pullback is A(W1 − W2); plus the skip G.
    dh = G + A @ (W1 - W2)
    # ⟨A, H dW1ᵀ⟩ = ⟨Aᵀ H, dW1⟩.
    dW1 = A.T @ H
    # b is broadcast over rows, so its cotangent sums A over them.
    db = A.sum(axis=0)
    # W2 enters twice: as the factor in Δ W2 (⟨G, Δ dW2⟩ = ⟨Δᵀ G, dW2⟩) and inside Δ
    # as −H W2ᵀ (⟨A, −H dW2ᵀ⟩ = −⟨Aᵀ H, dW2⟩).
    dW2 = delta.T @ G - A.T @ H
    return dh.reshape(h.shape), dW1, dW2, db


def init(d: int, r: int, rng: np.random.Generator, kind: str = "paper", dtype=np.float32) -> dict:
    """Initial parameters {W1, W2, b} for hidden size d and rank r.

    "paper":    W2, then W1 and b ~ U(−1/√d, 1/√d), as pyreft's NoreftIntervention (two
                torch.nn.Linear(d, r); minireft's W2 has no bias).
    "identity": W2 ~ U(−1/√d, 1/√d); W1 = W2; b = 0, so Δ = H W2ᵀ − H W2ᵀ = 0 and
                Φ(h) = h exactly, while dW1 = Aᵀ H stays nonzero.
    """
    d, r = _check.sizes(d, r)
    bound = 1.0 / np.sqrt(d)
    W2 = rng.uniform(-bound, bound, size=(r, d))
    if kind == "paper":
        W1 = rng.uniform(-bound, bound, size=(r, d))
        b = rng.uniform(-bound, bound, size=(r,))
    elif kind == "identity":
        W1 = W2.copy()
        b = np.zeros(r)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"W1": W1.astype(dtype), "W2": W2.astype(dtype), "b": b.astype(dtype)}

