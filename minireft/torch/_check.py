"""Shape and dtype checks for the PyTorch mirror (no finiteness check: it would sync the device)."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(name: str, x, ndim: int | None = None, min_ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}")
    return x


def same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{n}={d}" for n, d in dtypes.items())
        raise TypeError(f"arguments must share one dtype, got {got}; cast them with .to()")
    return next(iter(dtypes.values()))


def shape(name: str, x: torch.Tensor, expected) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(x.shape)}")


def low_rank(name: str, R: torch.Tensor) -> tuple[int, int]:
    """Check a (r, d) factor, or a stack (..., r, d) of them, with 1 <= r <= d; return (r, d)."""
    r, d = R.shape[-2:]
    if r < 1 or d < 1:
        raise ValueError(f"{name} must have shape (r, d) with r, d >= 1, got {tuple(R.shape)}")
    if r > d:
        raise ValueError(
            f"{name} has rank r={r} greater than hidden size d={d}; the rank must satisfy 1 <= r <= d"
        )
    return r, d


def sizes(d: int, r: int) -> None:
    """An init's hidden size d and rank r must satisfy 1 <= r <= d."""
    if r < 1 or d < 1 or r > d:
        raise ValueError(f"rank r={r} must satisfy 1 <= r <= hidden size d={d}")


def hidden(name: str, h: torch.Tensor, d: int) -> None:
    if h.shape[-1] != d:
        raise ValueError(f"{name} must have shape (..., {d}) to match the hidden size, got {tuple(h.shape)}")


def intervention(h, **params) -> int:
    """Check h (..., d) against an intervention's parameters, given in order as one or more
    (r, d) matrices then b (r,) (LoReFT R, W, b; DiReFT W1, W2, b; ConsReFT R, b); one
    dtype. The first matrix sets r and d. Return d."""
    *matrices, (name_bias, bias) = params.items()
    tensor("h", h, min_ndim=1)
    for name, m in matrices:
        tensor(name, m, ndim=2)
    tensor(name_bias, bias, ndim=1)
    same_dtype(h=h, **params)
    r, d = low_rank(*matrices[0])
    for name, m in matrices[1:]:
        shape(name, m, (r, d))
    shape(name_bias, bias, (r,))
    hidden("h", h, d)
    return d
