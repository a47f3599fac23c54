"""DiReFT: Φ(h) = h + W2ᵀ(W1 h + b), the paper's cheaper variant without orthogonality.

W1, W2 (r, d), b (r,). In row form, for a batch of hidden states H (N, d):

    Z   = H W1ᵀ + b      (N, r)
    Out = H + Z W2       (N, d)
"""

from __future__ import annotations

import numpy as np

from minireft import _check
from minireft.stiefel import random_stiefel

PARAMS = ("W1", "W2", "b")


def forward(h: np.ndarray, W1: np.ndarray, W2: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Φ(h) = h + W2ᵀ(W1 h + b).

    h: (..., d); W1, W2: (r, d); b: (r,). Returns (..., d), same dtype as h.
    """
    d = _check.intervention(h, W1=W1, W2=W2, b=b)
    H = h.reshape(-1, d)  # (N, d)
    return (H + (H @ W1.T + b) @ W2).reshape(h.shape)


def vjp(h, W1, W2, b, dout):
    """Vector-Jacobian products of Φ at (h, W1, W2, b) against the cotangent dout.

    h, dout: (..., d); W1, W2: (r, d); b: (r,). Returns (dh, dW1, dW2, db) with
    the shapes of (h, W1, W2, b). With G = dout (N, d), Z = H W1ᵀ + b, A = G W2ᵀ:

        dh = G + A W1     dW1 = Aᵀ H     dW2 = Zᵀ G     db = Σ_rows A
    """
    d = _check.intervention(h, W1=W1, W2=W2, b=b)
    dout = _check.array("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    Z = H @ W1.T + b  # (N, r)
    A = G @ W2.T  # (N, r): cotangent of Z, since Out = H + Z W2
    dh = G + A @ W1  # skip connection plus the pullback of H W1ᵀ
    dW1 = A.T @ H  # ⟨A, H dW1ᵀ⟩ = ⟨Aᵀ H, dW1⟩
    dW2 = Z.T @ G  # ⟨G, Z dW2⟩ = ⟨Zᵀ G, dW2⟩
    db = A.sum(axis=0)  # b is broadcast over rows
    return dh.reshape(h.shape), dW1, dW2, db


def init(d: int, r: int, rng: np.random.Generator, kind: str = "paper", dtype=np.float32) -> dict:
    """Initial parameters {W1, W2, b} for hidden size d and rank r.

    "paper":    W1, b ~ U(−1/√d, 1/√d), as torch.nn.Linear(d, r); W2 random orthonormal
                rows. pyreft's DireftIntervention keeps W2 orthonormal by a parametrisation;
                the paper's DiReFT drops the constraint, and so does this spec: W2 trains
                under AdamW like W1.
    "identity": W1 = 0, b = 0, W2 random orthonormal, so Φ(h) = h exactly while
                dW1 = Aᵀ H stays nonzero and training can leave the start.
    """
    d, r = _check.sizes(d, r)
    W2 = random_stiefel(r, d, rng)  # (r, d)
    if kind == "paper":
        bound = 1.0 / np.sqrt(d)
        W1 = rng.uniform(-bound, bound, size=(r, d))
        b = rng.uniform(-bound, bound, size=(r,))
    elif kind == "identity":
        W1 = np.zeros((r, d))
        b = np.zeros(r)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"W1": W1.astype(dtype), "W2": W2.astype(dtype), "b": b.astype(dtype)}
