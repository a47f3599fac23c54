"""Comparing a backend's output with the spec's, and the tolerance policy.

    abs_err = max |got − expected|                       (max over elements)
    rel_err = abs_err / max(max |expected|, TINY)          (normwise, in the max norm)
    pass   ⇔  abs_err ≤ atol + rtol · max |expected|

The error is measured against the largest expected entry rather than entry by
entry, because an entry near zero can come from cancellation (h − RᵀR h, say)
and carries an absolute error of the size of the terms that cancelled. Integer
outputs (positions, the optimizer's step count) must match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPES = ("float64", "float32")
TINY = np.finfo(np.float64).tiny  # guards rel_err against an all-zero expected value

# The default tolerance of each kind of operation: (rtol, atol) per dtype, and the
# reason where a kind departs from the base policy (float64 ≤ 1e-12 relative;
# float32 ≤ 1e-5 for values, ≤ 1e-4 for gradients). A case records the tolerance it
# uses in its meta.json, and the reason under "tolerance_reason". The error model: an
# output built from sums of k products carries a relative error of about √k·ε
# (ε = 2.2e-16 in float64, 6.0e-8 in float32), plus, in float32, the rounding of the
# float64 inputs; √(576·12)·6e-8 ≈ 5e-6 leaves the float32 value tolerance a margin.
TOLERANCES = {
    # Φ(h), P_R(G): a few matmuls.
    "value": {"float64": (1e-12, 0.0), "float32": (1e-5, 0.0)},
    # VJPs: sums over the N = b·n rows as well as over d.
    "gradient": {"float64": (1e-12, 0.0), "float32": (1e-4, 0.0)},
    # Retractions: one SVD or QR of a well-conditioned R + ξ.
    "retraction": {"float64": (1e-12, 0.0), "float32": (1e-5, 0.0)},
    "deviation": {"float64": (0.0, 1e-12), "float32": (0.0, 1e-5)},
    "trajectory": {"float64": (1e-10, 0.0), "float32": (1e-4, 0.0)},
    "exact": {"float64": (0.0, 0.0), "float32": (0.0, 0.0)},
}
TOLERANCE_REASONS = {
    "deviation": {
        dtype: "orthonormality_error is a deviation from I, whose scale is 1, and is near 0: "
               "the tolerance is absolute (<= 1e-12 in float64, <= 1e-5 in float32); "
               "R Rᵀ itself carries a rounding error of about √d·ε"
        for dtype in DTYPES
    },
    "trajectory": {
        "float64": "five steps compound: each step's rounding (an SVD or QR, a projection) moves "
                   "the point where the next gradient is projected; and Adam's per-entry "
                   "m̂/(sqrt(v̂) + ε) gives an entry whose gradient sits at the rounding level "
                   "of the others a step of up to lr in an arbitrary direction",
        "float32": "five steps compound as in float64, at ε = 6e-8: an entry of the projected "
                   "gradient within float32 rounding of zero can take a step of up to lr of "
                   "either sign, so trajectories get the gradient tolerance, 1e-4, not the "
                   "value tolerance 1e-5",
    },
}

# --------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """One output of one case: its worst element and the verdict."""

    output: str
    ok: bool
    abs_err: float
    rel_err: float
    rtol: float
    atol: float
    index: tuple = ()
    got: object = None
    expected: object = None
    note: str = ""

    def describe(self, case: str, dtype: str) -> str:
        where = f"worst at index {self.index}: got {self.got!r}, expected {self.expected!r}; "
        if self.note:
            where = f"{self.note}; "
        return (f"{case} [{dtype}] {self.output}: {where}abs err {self.abs_err:.3e}, "
                f"rel err {self.rel_err:.3e}; tolerance rtol {self.rtol:g}, atol {self.atol:g}")


def compare(output: str, got: np.ndarray, expected: np.ndarray, rtol: float, atol: float,
            dtype: str | None = None) -> Comparison:
    """abs_err ≤ atol + rtol·max|expected|, reporting the worst element (exact for integers)."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        return Comparison(output, False, np.inf, np.inf, rtol, atol,
                          note=f"shape {got.shape}, expected {expected.shape}")
    if expected.dtype.kind in "iub":
        rtol = atol = 0.0
    elif dtype is not None and got.ndim > 0 and got.dtype != np.dtype(dtype):
        return Comparison(output, False, np.inf, np.inf, rtol, atol,
                          note=f"dtype {got.dtype}, expected {dtype} (results keep the inputs' dtype)")
    if got.size == 0:
        return Comparison(output, True, 0.0, 0.0, rtol, atol)
    exp = expected.astype(np.float64)
    diff = np.atleast_1d(np.abs(got.astype(np.float64) - exp))  # 0-d results too
    diff[~np.isfinite(diff)] = np.inf  # NaN from the backend counts as an infinite error
    flat = int(np.argmax(diff))
    index = tuple(int(i) for i in np.unravel_index(flat, expected.shape))
    abs_err = float(diff[flat] if diff.ndim == 1 else diff.flat[flat])
    scale = float(np.max(np.abs(exp)))
    rel_err = abs_err / max(scale, TINY)
    ok = abs_err <= atol + rtol * scale
    return Comparison(output, ok, abs_err, rel_err, rtol, atol, index,
                      got.flat[flat].item(), expected.flat[flat].item())
