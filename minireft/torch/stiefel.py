"""PyTorch mirror of minireft.stiefel: St(r, d) = {R : R Rᵀ = I_r}, R of shape (r, d) or a
stack (..., r, d), each matrix on its own."""

from __future__ import annotations

import torch

from minireft.torch import _check


def sym(A: torch.Tensor) -> torch.Tensor:
    """sym(A) = (A + Aᵀ) / 2 for a square A (or a stack of them)."""
    return 0.5 * (A + A.mT)


def _pair(R, G, G_name):
    _check.tensor("R", R, min_ndim=2)
    _check.tensor(G_name, G, min_ndim=2)
    _check.same_dtype(R=R, **{G_name: G})
    _check.low_rank("R", R)
    _check.shape(G_name, G, R.shape)


def project_tangent(R: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """P_R(G) = G − sym(G Rᵀ) R. R, G: (..., r, d); returns (..., r, d)."""
    _pair(R, G, "G")
    return G - sym(G @ R.mT) @ R


def retract_polar(R: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """retract_polar(R, ξ) = U Vᵀ where R + ξ = U Σ Vᵀ (thin SVD). R, xi: (..., r, d)."""
    _pair(R, xi, "xi")
    U, _, Vh = torch.linalg.svd(R + xi, full_matrices=False)  # U (..., r, r), Vh (..., r, d)
    return U @ Vh


def retract_qr(R: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """retract_qr(R, ξ) = Qᵀ where (R + ξ)ᵀ = Q T, signs fixed so diag(T) > 0. R, xi: (..., r, d)."""
    _pair(R, xi, "xi")
    Q, T = torch.linalg.qr((R + xi).mT)  # Q (..., d, r), T (..., r, r)
    signs = torch.sign(torch.diagonal(T, dim1=-2, dim2=-1))  # (..., r)
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (Q * signs[..., None, :]).mT


def orthonormality_error(R: torch.Tensor) -> float:
    """max |R Rᵀ − I_r| over all entries (of every matrix of a stack). R: (..., r, d)."""
    _check.tensor("R", R, min_ndim=2)
    eye = torch.eye(R.shape[-2], dtype=R.dtype, device=R.device)
    return float((R @ R.mT - eye).abs().max())


def random_stiefel(r: int, d: int, rng: torch.Generator | None = None, dtype=torch.float32, device=None):
    """A Haar-distributed point of St(r, d): Qᵀ from the sign-fixed QR of a Gaussian (d, r).

    Computed in float64 on the CPU (so the draw is the same on every device), then cast.
    """
    if r < 1 or d < 1 or r > d:
        raise ValueError(f"need 1 <= r <= d, got rank r={r} and hidden size d={d}")
    Z = torch.randn(d, r, generator=rng, dtype=torch.float64)  # (d, r)
    Q, T = torch.linalg.qr(Z)
    signs = torch.sign(torch.diagonal(T))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (Q * signs).T.contiguous().to(dtype=dtype, device=device)
