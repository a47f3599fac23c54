"""Paired comparisons of two methods scored on the same rows.

Two methods A and B, each right or wrong on the same n rows (a_i, b_i ∈ {0, 1}):

    difference   D = mean(a) − mean(b) = mean(a_i − b_i)
    interval     the 2.5% and 97.5% quantiles of D over bootstrap resamples of the rows
                 (the same resampled rows for both methods: the pairing is kept, so what the
                 two get right or wrong together cancels instead of widening the interval)
    McNemar      with n10 rows only A gets right and n01 only B: under "no difference" each
                 discordant row is a fair coin, so p = P(Binomial(n10 + n01, 1/2) as far from
                 half as observed), two-sided, exact

Used by scripts/bench_tasks.py (its table and --curve). NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

N_BOOT = 10_000


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], *, n_boot: int = N_BOOT, level: float = 0.95,
                     seed: int = 0) -> dict:
    """{"diff", "lo", "hi", "n"}: D = mean(a) − mean(b) and its percentile bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be the same non-empty rows, got shapes {a.shape} and {b.shape}")
    d = a - b                                                               # (n,)
    rows = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    means = d[rows].mean(axis=1)                                            # (n_boot,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": int(d.size)}


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value over the discordant rows (module doc)."""
    n10 = sum(bool(x) and not bool(y) for x, y in zip(a, b, strict=True))
    n01 = sum(bool(y) and not bool(x) for x, y in zip(a, b, strict=True))
    n, k = n10 + n01, min(n10, n01)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def describe(a: Sequence[bool], b: Sequence[bool], **kwargs) -> str:
    """'+0.033 [-0.020, +0.087], McNemar p 0.26': A − B on the same rows."""
    r = paired_bootstrap(a, b, **kwargs)
    return f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}], McNemar p {mcnemar_p(a, b):.2g}"
