"""PyTorch mirror of minireft.loreft: Φ(h) = h + Rᵀ(W h + b − R h).

Same names, same formulas, same operation order as the NumPy spec; `LoReFTFunction`
wires the analytic VJP into autograd.
"""

from __future__ import annotations

import math

import torch

from minireft.torch import _check
from minireft.torch._autograd import analytic_function
from minireft.torch.stiefel import random_stiefel

PARAMS = ("R", "W", "b")


def forward(h, R, W, b):
    """Φ(h) = h + Rᵀ(W h + b − R h). h: (..., d); R, W: (r, d); b: (r,)."""
    d = _check.intervention(h, R=R, W=W, b=b)
    H = h.reshape(-1, d)  # (N, d)
    delta = H @ W.T + b - H @ R.T  # (N, r)
    return (H + delta @ R).reshape(h.shape)


def vjp(h, R, W, b, dout):
    """(dh, dR, dW, db) with G = dout, Δ = H Wᵀ + b − H Rᵀ, A = G Rᵀ:

    dh = G + A (W − R);  dW = Aᵀ H;  db = Σ_rows A;  dR = Δᵀ G − Aᵀ H.
    """
    d = _check.intervention(h, R=R, W=W, b=b)
    _check.tensor("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    delta = H @ W.T + b - H @ R.T  # (N, r)
    A = G @ R.T  # (N, r): cotangent of Δ
    dh = G + A @ (W - R)
    dW = A.T @ H
    db = A.sum(dim=0)
    dR = delta.T @ G - A.T @ H
    return dh.reshape(h.shape), dR, dW, db


LoReFTFunction = analytic_function("LoReFTFunction", forward, vjp)


def apply(h, R, W, b):
    """Φ(h) with the analytic backward."""
    return LoReFTFunction.apply(h, R, W, b)


def init(d: int, r: int, rng: torch.Generator | None = None, kind: str = "paper", dtype=torch.float32) -> dict:
    """{R, W, b}: "paper" (W, b ~ U(−1/√d, 1/√d)) or "identity" (W = R, b = 0)."""
    _check.sizes(d, r)
    R = random_stiefel(r, d, rng, dtype=torch.float64)
    if kind == "paper":
        bound = 1.0 / math.sqrt(d)
        W = torch.rand(r, d, generator=rng, dtype=torch.float64) * (2 * bound) - bound
        b = torch.rand(r, generator=rng, dtype=torch.float64) * (2 * bound) - bound
    elif kind == "identity":
        W = R.clone()
        b = torch.zeros(r, dtype=torch.float64)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"R": R.to(dtype), "W": W.to(dtype), "b": b.to(dtype)}
