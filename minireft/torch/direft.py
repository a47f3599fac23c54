"""PyTorch mirror of minireft.direft: Φ(h) = h + W2ᵀ(W1 h + b)."""

from __future__ import annotations

import math

import torch

from minireft.torch import _check
from minireft.torch._autograd import analytic_function
from minireft.torch.stiefel import random_stiefel

PARAMS = ("W1", "W2", "b")


def forward(h, W1, W2, b):
    """Φ(h) = h + W2ᵀ(W1 h + b). h: (..., d); W1, W2: (r, d); b: (r,)."""
    d = _check.intervention(h, W1=W1, W2=W2, b=b)
    H = h.reshape(-1, d)  # (N, d)
    return (H + (H @ W1.T + b) @ W2).reshape(h.shape)


def vjp(h, W1, W2, b, dout):
    """(dh, dW1, dW2, db) with G = dout, Z = H W1ᵀ + b, A = G W2ᵀ:

    dh = G + A W1;  dW1 = Aᵀ H;  dW2 = Zᵀ G;  db = Σ_rows A.
    """
    d = _check.intervention(h, W1=W1, W2=W2, b=b)
    _check.tensor("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    Z = H @ W1.T + b  # (N, r)
    A = G @ W2.T  # (N, r)
    dh = G + A @ W1
    dW1 = A.T @ H
    dW2 = Z.T @ G
    db = A.sum(dim=0)
    return dh.reshape(h.shape), dW1, dW2, db


DiReFTFunction = analytic_function("DiReFTFunction", forward, vjp)


def apply(h, W1, W2, b):
    """Φ(h) with the analytic backward."""
    return DiReFTFunction.apply(h, W1, W2, b)


def init(d: int, r: int, rng: torch.Generator | None = None, kind: str = "paper", dtype=torch.float32) -> dict:
    """{W1, W2, b}: "paper" (W1, b ~ U(−1/√d, 1/√d), W2 orthonormal) or "identity" (W1 = 0, b = 0)."""
    _check.sizes(d, r)
    W2 = random_stiefel(r, d, rng, dtype=torch.float64)
    if kind == "paper":
        bound = 1.0 / math.sqrt(d)
        W1 = torch.rand(r, d, generator=rng, dtype=torch.float64) * (2 * bound) - bound
        b = torch.rand(r, generator=rng, dtype=torch.float64) * (2 * bound) - bound
    elif kind == "identity":
        W1 = torch.zeros(r, d, dtype=torch.float64)
        b = torch.zeros(r, dtype=torch.float64)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"W1": W1.to(dtype), "W2": W2.to(dtype), "b": b.to(dtype)}
