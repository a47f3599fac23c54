"""PyTorch mirror of minireft.consreft: Φ(h) = h + Rᵀ(b − R h)."""

from __future__ import annotations

import torch

from minireft.consreft import NO_IDENTITY
from minireft.torch import _check
from minireft.torch._autograd import analytic_function
from minireft.torch.stiefel import random_stiefel

PARAMS = ("R", "b")
INITS = ("paper",)


def forward(h, R, b):
    """Φ(h) = h + Rᵀ(b − R h). h: (..., d); R: (r, d); b: (r,)."""
    d = _check.intervention(h, R=R, b=b)
    H = h.reshape(-1, d)  # (N, d)
    delta = b - H @ R.T  # (N, r)
    return (H + delta @ R).reshape(h.shape)


def vjp(h, R, b, dout):
    """(dh, dR, db) with G = dout, Δ = b − H Rᵀ, A = G Rᵀ:

    dh = G − A R;  db = Σ_rows A;  dR = Δᵀ G − Aᵀ H.
    """
    d = _check.intervention(h, R=R, b=b)
    _check.tensor("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    delta = b - H @ R.T  # (N, r)
    A = G @ R.T  # (N, r): cotangent of Δ
    dh = G - A @ R
    db = A.sum(dim=0)
    dR = delta.T @ G - A.T @ H
    return dh.reshape(h.shape), dR, db


ConsReFTFunction = analytic_function("ConsReFTFunction", forward, vjp)


def apply(h, R, b):
    """Φ(h) with the analytic backward."""
    return ConsReFTFunction.apply(h, R, b)


def init(d: int, r: int, rng: torch.Generator | None = None, kind: str = "paper", dtype=torch.float32) -> dict:
    """{R, b}: "paper" (R orthonormal, b ~ U(0, 1)); "identity" is refused (no (R, b) gives it)."""
    _check.sizes(d, r)
    if kind == "identity":
        raise ValueError(NO_IDENTITY)
    if kind != "paper":
        raise ValueError(f"kind must be 'paper' (ConsReFT has no identity init), got {kind!r}")
    R = random_stiefel(r, d, rng, dtype=torch.float64)
    b = torch.rand(r, generator=rng, dtype=torch.float64)
    return {"R": R.to(dtype), "b": b.to(dtype)}
