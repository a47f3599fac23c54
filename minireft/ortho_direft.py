"""Orthogonal DiReFT: Φ(h) = h + Rᵀ(W h + b), DiReFT with R kept orthonormal.

pyreft's "DireftIntervention" and the paper's ablation; minireft's "direft" is the paper's
DiReFT without the constraint. R (r, d) has orthonormal rows, W (r, d), b (r,). In row
form, for a batch of hidden states H (N, d):

    Z   = H Wᵀ + b                  (N, r)
    Out = H + Z R                   (N, d)

With RRᵀ = I, R (Φ(h) − h) = W h + b, and nothing outside the row space of R moves.
Unlike LoReFT the current coordinates R h are not subtracted: they are added to.
"""

from __future__ import annotations

import numpy as np

from minireft import _check
from minireft.stiefel import random_stiefel

PARAMS = ("R", "W", "b")
INITS = ("paper", "identity")


def forward(h: np.ndarray, R: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Φ(h) = h + Rᵀ(W h + b).

    h: (..., d); R, W: (r, d); b: (r,). Returns (..., d), same dtype as h.
    """
    d = _check.intervention(h, R=R, W=W, b=b)
    H = h.reshape(-1, d)  # (N, d)
    return (H + (H @ W.T + b) @ R).reshape(h.shape)


def vjp(h, R, W, b, dout):
    """Vector-Jacobian products of Φ at (h, R, W, b) against the cotangent dout.

    h, dout: (..., d); R, W: (r, d); b: (r,). Returns (dh, dR, dW, db) with the shapes
    of (h, R, W, b). With G = dout (N, d), Z = H Wᵀ + b, A = G Rᵀ:

        dh = G + A W     dW = Aᵀ H     dR = Zᵀ G     db = Σ_rows A
    """
    d = _check.intervention(h, R=R, W=W, b=b)
    dout = _check.array("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    Z = H @ W.T + b  # (N, r)
    A = G @ R.T  # (N, r): the cotangent of Z, since Out = H + Z R ⇒ dZ = G Rᵀ
    dh = G + A @ W  # the skip plus the pullback of H Wᵀ: ⟨A, dH Wᵀ⟩ = ⟨A W, dH⟩
    dW = A.T @ H  # ⟨A, H dWᵀ⟩ = ⟨Aᵀ H, dW⟩
    dR = Z.T @ G  # ⟨G, Z dR⟩ = ⟨Zᵀ G, dR⟩
    db = A.sum(axis=0)  # b is broadcast over rows
    return dh.reshape(h.shape), dR, dW, db


def init(d: int, r: int, rng: np.random.Generator, kind: str = "paper", dtype=np.float32) -> dict:
    """Initial parameters {R, W, b} for hidden size d and rank r.

    "paper":    R random orthonormal; W, b ~ U(−1/√d, 1/√d), as torch.nn.Linear(d, r)
                (pyreft's DireftIntervention).
    "identity": R random orthonormal; W = 0; b = 0, so Z = 0 and Φ(h) = h exactly, while
                dW = Aᵀ H stays nonzero.
    """
    d, r = _check.sizes(d, r)
    R = random_stiefel(r, d, rng)  # (r, d), float64
    if kind == "paper":
        bound = 1.0 / np.sqrt(d)
        W = rng.uniform(-bound, bound, size=(r, d))
        b = rng.uniform(-bound, bound, size=(r,))
    elif kind == "identity":
        W = np.zeros((r, d))
        b = np.zeros(r)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"R": R.astype(dtype), "W": W.astype(dtype), "b": b.astype(dtype)}
