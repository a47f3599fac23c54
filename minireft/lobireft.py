"""LobiReFT: Φ(h) = h + Rᵀ b, a learned shift inside a rank-r subspace.

R (r, d) has orthonormal rows, b (r,). In row form, for a batch of hidden states H (N, d):

    s   = b R                       (d,)     the shift, the same for every row
    Out = H + s                     (N, d)

The edit does not depend on h: Φ(h) − h = Rᵀ b lies in the row space of R, and with
RRᵀ = I, R (Φ(h) − h) = b.
"""

from __future__ import annotations

import numpy as np

from minireft import _check
from minireft.stiefel import random_stiefel

PARAMS = ("R", "b")
INITS = ("paper", "identity")


def forward(h: np.ndarray, R: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Φ(h) = h + Rᵀ b.

    h: (..., d); R: (r, d); b: (r,). Returns (..., d), same dtype as h.
    """
    d = _check.intervention(h, R=R, b=b)
    H = h.reshape(-1, d)  # (N, d)
    return (H + b @ R).reshape(h.shape)


def vjp(h, R, b, dout):
    """Vector-Jacobian products of Φ at (h, R, b) against the cotangent dout.

    h, dout: (..., d); R: (r, d); b: (r,). Returns (dh, dR, db) with the shapes of
    (h, R, b). With G = dout (N, d) and g = Σ_rows G (d,):

        dh = G        db = R g        dR = b gᵀ (the outer product)
    """
    d = _check.intervention(h, R=R, b=b)
    dout = _check.array("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    G = dout.reshape(-1, d)  # (N, d)
    # The shift s = b R is broadcast over rows, so its cotangent sums G over them.
    g = G.sum(axis=0)  # (d,)
    # Out = H + s: the skip passes G through unchanged.
    dh = G.copy()
    # ⟨g, b dR⟩ = ⟨b gᵀ, dR⟩ (s = Rᵀ b as a column: move bᵀ across).
    dR = np.outer(b, g)
    # ⟨g, db R⟩ = ⟨R g, db⟩ (move R across).
    db = R @ g
    return dh.reshape(h.shape), dR, db


def init(d: int, r: int, rng: np.random.Generator, kind: str = "paper", dtype=np.float32) -> dict:
    """Initial parameters {R, b} for hidden size d and rank r.

    "paper":    R random orthonormal; b ~ U(0, 1), as pyreft's LobireftIntervention
                (torch.rand(r)).
    "identity": R random orthonormal; b = 0, so Φ(h) = h + 0 = h exactly, while
                db = R Σ_rows G stays nonzero.
    """
    d, r = _check.sizes(d, r)
    R = random_stiefel(r, d, rng)  # (r, d), float64
    if kind == "paper":
        b = rng.uniform(0.0, 1.0, size=(r,))
    elif kind == "identity":
        b = np.zeros(r)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"R": R.astype(dtype), "b": b.astype(dtype)}
