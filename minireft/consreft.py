"""ConsReFT: Φ(h) = h + Rᵀ(b − R h), the subspace coordinates set to a constant.

R (r, d) has orthonormal rows, b (r,). In row form, for a batch of hidden states H (N, d):

    Δ   = b − H Rᵀ                  (N, r)   constant target minus current coordinates
    Out = H + Δ R                   (N, d)

With RRᵀ = I, R Φ(h) = b for every h, and nothing outside the row space of R moves.
There is no identity init: Φ(h) = h for all h would need RᵀR h = Rᵀ b for all h, i.e.
RᵀR = 0, which RRᵀ = I rules out.
"""

from __future__ import annotations

import numpy as np

from minireft import _check
from minireft.stiefel import random_stiefel

PARAMS = ("R", "b")
INITS = ("paper",)
NO_IDENTITY = ("ConsReFT has no identity init: Φ(h) = h + Rᵀ(b − R h) sets the subspace "
               "coordinates R Φ(h) to the constant b, so Φ(h) = h for every h would need RᵀR = 0, "
               "impossible with R Rᵀ = I; use init='paper', or LobiReFT (Φ(h) = h + Rᵀ b) whose "
               "b = 0 is the identity")


def forward(h: np.ndarray, R: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Φ(h) = h + Rᵀ(b − R h).

    h: (..., d); R: (r, d); b: (r,). Returns (..., d), same dtype as h.
    """
    d = _check.intervention(h, R=R, b=b)
    H = h.reshape(-1, d)  # (N, d)
    delta = b - H @ R.T  # (N, r)
    return (H + delta @ R).reshape(h.shape)


def vjp(h, R, b, dout):
    """Vector-Jacobian products of Φ at (h, R, b) against the cotangent dout.

    h, dout: (..., d); R: (r, d); b: (r,). Returns (dh, dR, db) with the shapes of
    (h, R, b). With G = dout (N, d), Δ = b − H Rᵀ, A = G Rᵀ:

        dh = G − A R        db = Σ_rows A        dR = Δᵀ G − Aᵀ H
    """
    d = _check.intervention(h, R=R, b=b)
    dout = _check.array("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    delta = b - H @ R.T  # (N, r)
    A = G @ R.T  # (N, r): the cotangent of Δ, since Out = H + Δ R ⇒ dΔ = G Rᵀ
    # Δ depends on H through −H Rᵀ, so its pullback is −A R; plus the skip G.
    dh = G - A @ R
    # b is broadcast over rows, so its cotangent sums A over them.
    db = A.sum(axis=0)
    # R enters twice: as the factor in Δ R (⟨G, Δ dR⟩ = ⟨Δᵀ G, dR⟩) and inside Δ
    # as −H Rᵀ (⟨A, −H dRᵀ⟩ = −⟨Aᵀ H, dR⟩).
    dR = delta.T @ G - A.T @ H
    return dh.reshape(h.shape), dR, db


def init(d: int, r: int, rng: np.random.Generator, kind: str = "paper", dtype=np.float32) -> dict:
    """Initial parameters {R, b} for hidden size d and rank r.

    "paper": R random orthonormal; b ~ U(0, 1), as pyreft's ConsreftIntervention
             (torch.rand(r)). "identity" is refused: no (R, b) makes Φ the identity.
    """
    d, r = _check.sizes(d, r)
    if kind == "identity":
        raise ValueError(NO_IDENTITY)
    if kind != "paper":
        raise ValueError(f"kind must be 'paper' (ConsReFT has no identity init), got {kind!r}")
    R = random_stiefel(r, d, rng)  # (r, d), float64
    b = rng.uniform(0.0, 1.0, size=(r,))
    return {"R": R.astype(dtype), "b": b.astype(dtype)}
