"""PyTorch mirror of minireft.lobireft: Φ(h) = h + Rᵀ b."""

from __future__ import annotations

import torch

from minireft.torch import _check
from minireft.torch._autograd import analytic_function
from minireft.torch.stiefel import random_stiefel

PARAMS = ("R", "b")
INITS = ("paper", "identity")


def forward(h, R, b):
    """Φ(h) = h + Rᵀ b. h: (..., d); R: (r, d); b: (r,)."""
    d = _check.intervention(h, R=R, b=b)
    H = h.reshape(-1, d)  # (N, d)
    return (H + b @ R).reshape(h.shape)


def vjp(h, R, b, dout):
    """(dh, dR, db) with G = dout, g = Σ_rows G:  dh = G;  db = R g;  dR = b gᵀ."""
    d = _check.intervention(h, R=R, b=b)
    _check.tensor("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    G = dout.reshape(-1, d)  # (N, d)
    g = G.sum(dim=0)  # (d,)
    dh = G.clone()
    dR = torch.outer(b, g)
    db = R @ g
    return dh.reshape(h.shape), dR, db


LobiReFTFunction = analytic_function("LobiReFTFunction", forward, vjp)


def apply(h, R, b):
    """Φ(h) with the analytic backward."""
    return LobiReFTFunction.apply(h, R, b)


def init(d: int, r: int, rng: torch.Generator | None = None, kind: str = "paper", dtype=torch.float32) -> dict:
    """{R, b}: "paper" (R orthonormal, b ~ U(0, 1)) or "identity" (b = 0)."""
    _check.sizes(d, r)
    R = random_stiefel(r, d, rng, dtype=torch.float64)
    if kind == "paper":
        b = torch.rand(r, generator=rng, dtype=torch.float64)
    elif kind == "identity":
        b = torch.zeros(r, dtype=torch.float64)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"R": R.to(dtype), "b": b.to(dtype)}
