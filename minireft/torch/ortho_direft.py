"""PyTorch mirror of minireft.ortho_direft: Φ(h) = h + Rᵀ(W h + b), R orthonormal."""

from __future__ import annotations

import math

import torch

from minireft.torch import _check
from minireft.torch._autograd import analytic_function
from minireft.torch.stiefel import random_stiefel

PARAMS = ("R", "W", "b")
INITS = ("paper", "identity")


def forward(h, R, W, b):
    """Φ(h) = h + Rᵀ(W h + b). h: (..., d); R, W: (r, d); b: (r,)."""
    d = _check.intervention(h, R=R, W=W, b=b)
    H = h.reshape(-1, d)  # (N, d)
    return (H + (H @ W.T + b) @ R).reshape(h.shape)


def vjp(h, R, W, b, dout):
    """(dh, dR, dW, db) with G = dout, Z = H Wᵀ + b, A = G Rᵀ:

    dh = G + A W;  dW = Aᵀ H;  dR = Zᵀ G;  db = Σ_rows A.
    """
    d = _check.intervention(h, R=R, W=W, b=b)
    _check.tensor("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    Z = H @ W.T + b  # (N, r)
    A = G @ R.T  # (N, r)
    dh = G + A @ W
    dW = A.T @ H
    dR = Z.T @ G
    db = A.sum(dim=0)
    return dh.reshape(h.shape), dR, dW, db


OrthoDiReFTFunction = analytic_function("OrthoDiReFTFunction", forward, vjp)


def apply(h, R, W, b):
    """Φ(h) with the analytic backward."""
    return OrthoDiReFTFunction.apply(h, R, W, b)


def init(d: int, r: int, rng: torch.Generator | None = None, kind: str = "paper", dtype=torch.float32) -> dict:
    """{R, W, b}: "paper" (R orthonormal; W, b ~ U(−1/√d, 1/√d)) or "identity" (W = 0, b = 0)."""
    _check.sizes(d, r)
    R = random_stiefel(r, d, rng, dtype=torch.float64)
    if kind == "paper":
        bound = 1.0 / math.sqrt(d)
        W = torch.rand(r, d, generator=rng, dtype=torch.float64) * (2 * bound) - bound
        b = torch.rand(r, generator=rng, dtype=torch.float64) * (2 * bound) - bound
    elif kind == "identity":
        W = torch.zeros(r, d, dtype=torch.float64)
        b = torch.zeros(r, dtype=torch.float64)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"R": R.to(dtype), "W": W.to(dtype), "b": b.to(dtype)}
