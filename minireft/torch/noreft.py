"""PyTorch mirror of minireft.noreft: Φ(h) = h + W2ᵀ(W1 h + b − W2 h)."""

from __future__ import annotations

import math

import torch

from minireft.torch import _check
from minireft.torch._autograd import analytic_function

PARAMS = ("W1", "W2", "b")
INITS = ("paper", "identity")


def forward(h, W1, W2, b):
    """Φ(h) = h + W2ᵀ(W1 h + b − W2 h). h: (..., d); W1, W2: (r, d); b: (r,)."""
    d = _check.intervention(h, W1=W1, W2=W2, b=b)
    H = h.reshape(-1, d)  # (N, d)
    delta = H @ W1.T + b - H @ W2.T  # (N, r)
    return (H + delta @ W2).reshape(h.shape)


def vjp(h, W1, W2, b, dout):
    """(dh, dW1, dW2, db) with G = dout, Δ = H W1ᵀ + b − H W2ᵀ, A = G W2ᵀ:

    dh = G + A (W1 − W2);  dW1 = Aᵀ H;  db = Σ_rows A;  dW2 = Δᵀ G − Aᵀ H.
    """
    d = _check.intervention(h, W1=W1, W2=W2, b=b)
    _check.tensor("dout", dout)
    _check.same_dtype(h=h, dout=dout)
    _check.shape("dout", dout, h.shape)
    H = h.reshape(-1, d)  # (N, d)
    G = dout.reshape(-1, d)  # (N, d)
    delta = H @ W1.T + b - H @ W2.T  # (N, r)
    A = G @ W2.T  # (N, r): cotangent of Δ
    dh = G + A @ (W1 - W2)
    dW1 = A.T @ H
    db = A.sum(dim=0)
    dW2 = delta.T @ G - A.T @ H
    return dh.reshape(h.shape), dW1, dW2, db


NoReFTFunction = analytic_function("NoReFTFunction", forward, vjp)


def apply(h, W1, W2, b):
    """Φ(h) with the analytic backward."""
    return NoReFTFunction.apply(h, W1, W2, b)


def init(d: int, r: int, rng: torch.Generator | None = None, kind: str = "paper", dtype=torch.float32) -> dict:
    """{W1, W2, b}: "paper" (W2, W1, b ~ U(−1/√d, 1/√d)) or "identity" (W1 = W2, b = 0)."""
    _check.sizes(d, r)
    bound = 1.0 / math.sqrt(d)
    W2 = torch.rand(r, d, generator=rng, dtype=torch.float64) * (2 * bound) - bound
    if kind == "paper":
        W1 = torch.rand(r, d, generator=rng, dtype=torch.float64) * (2 * bound) - bound
        b = torch.rand(r, generator=rng, dtype=torch.float64) * (2 * bound) - bound
    elif kind == "identity":
        W1 = W2.clone()
        b = torch.zeros(r, dtype=torch.float64)
    else:
        raise ValueError(f"kind must be 'paper' or 'identity', got {kind!r}")
    return {"W1": W1.to(dtype), "W2": W2.to(dtype), "b": b.to(dtype)}
