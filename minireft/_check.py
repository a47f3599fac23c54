"""Argument checks shared by the spec functions.

Every failure names the argument, what was received and what was expected, so a
caller can fix the call without reading the source.
"""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def array(name: str, x, ndim: int | None = None, min_ndim: int | None = None) -> np.ndarray:
    """Return `x` as a float32/float64 ndarray, or raise naming `name`."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {x.shape}")
    return x


def finite(name: str, x: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])  # plain ints: "(1,)", not "(np.int64(1),)"
        raise ValueError(f"{name} must be finite, found {x[bad]} at index {bad}")
    return x


def same_dtype(**arrays: np.ndarray) -> np.dtype:
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{n}={d}" for n, d in dtypes.items())
        raise TypeError(f"arguments must share one dtype, got {got}; cast them with .astype()")
    return next(iter(dtypes.values()))


def shape(name: str, x: np.ndarray, expected: tuple[int, ...]) -> None:
    if x.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {x.shape}")


def low_rank(R_name: str, R: np.ndarray) -> tuple[int, int]:
    """Check a (r, d) factor, or a stack (..., r, d) of them, with 1 <= r <= d; return (r, d)."""
    r, d = R.shape[-2:]
    if r < 1 or d < 1:
        raise ValueError(f"{R_name} must have shape (r, d) with r, d >= 1, got {R.shape}")
    if r > d:
        raise ValueError(
            f"{R_name} has rank r={r} greater than hidden size d={d}; "
            f"the rank must satisfy 1 <= r <= d"
        )
    return r, d


def hidden(name: str, h: np.ndarray, d: int) -> None:
    if h.shape[-1] != d:
        raise ValueError(f"{name} must have shape (..., {d}) to match the hidden size, got {h.shape}")


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def sizes(d, r) -> tuple[int, int]:
    """The hidden size d and rank r of an init, as ints with 1 <= r <= d."""
    d = positive_int("d", d)
    r = positive_int("r", r)
    if r > d:
        raise ValueError(f"rank r={r} is greater than hidden size d={d}; need 1 <= r <= d")
    return d, r


def intervention(h, **params) -> int:
    """Check h (..., d) against an intervention's parameters, given in order as one or more
    (r, d) matrices then b (r,) (LoReFT R, W, b; DiReFT W1, W2, b; ConsReFT R, b); all
    finite, one dtype. The first matrix sets r and d. Return d."""
    *matrices, (name_bias, bias) = params.items()
    array("h", h, min_ndim=1)
    for name, m in matrices:
        array(name, m, ndim=2)
    array(name_bias, bias, ndim=1)
    same_dtype(h=h, **params)
    r, d = low_rank(*matrices[0])
    for name, m in matrices[1:]:
        shape(name, m, (r, d))
    shape(name_bias, bias, (r,))
    hidden("h", h, d)
    for name, p in params.items():
        finite(name, p)
    return d
