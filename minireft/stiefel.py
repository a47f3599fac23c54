"""The Stiefel manifold St(r, d) = {R ∈ ℝ^{r×d} : R Rᵀ = I_r}, Euclidean metric.

R has orthonormal *rows* (pyreft stores the transpose, a d×r matrix with
orthonormal columns). Every function takes and returns R in this r×d form, or a
stack (..., r, d) of such matrices, each treated on its own (an optimizer steps all
the R of one shape at once).
"""

from __future__ import annotations

import numpy as np

from minireft import _check


def sym(A: np.ndarray) -> np.ndarray:
    """sym(A) = (A + Aᵀ) / 2 for a square A (or a stack of them)."""
    return 0.5 * (A + np.swapaxes(A, -1, -2))


def _pair(R, G, G_name: str) -> tuple[np.ndarray, np.ndarray]:
    R = _check.array("R", R, min_ndim=2)
    G = _check.array(G_name, G, min_ndim=2)
    _check.same_dtype(R=R, **{G_name: G})
    _check.low_rank("R", R)
    _check.shape(G_name, G, R.shape)
    return R, G


def project_tangent(R: np.ndarray, G: np.ndarray) -> np.ndarray:
    """P_R(G) = G − sym(G Rᵀ) R: the tangent vector at R nearest to G.

    R, G: (..., r, d). Returns (..., r, d). For R on St(r, d) the result ξ satisfies
    ξ Rᵀ + R ξᵀ = 0 (the tangent condition), and P_R is idempotent.
    """
    R, G = _pair(R, G, "G")
    return G - sym(G @ np.swapaxes(R, -1, -2)) @ R


def retract_polar(R: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """retract_polar(R, ξ) = U Vᵀ where R + ξ = U Σ Vᵀ (thin SVD).

    R, xi: (..., r, d). Returns (..., r, d) with orthonormal rows: U Vᵀ (U Vᵀ)ᵀ = U Vᵀ V Uᵀ = I.
    U Vᵀ is the point of St(r, d) nearest R + ξ in Frobenius norm; it is a
    second-order retraction.
    """
    R, xi = _pair(R, xi, "xi")
    U, _, Vt = np.linalg.svd(R + xi, full_matrices=False)  # U (..., r, r), Vt (..., r, d)
    return U @ Vt


def retract_qr(R: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """retract_qr(R, ξ) = Qᵀ where (R + ξ)ᵀ = Q T, signs fixed so diag(T) > 0.

    R, xi: (..., r, d). Returns (..., r, d). Q (d, r) has orthonormal columns, so Qᵀ
    has orthonormal rows. Without the sign fix the factorisation is unique only up
    to the signs of Q's columns, and retract_qr(R, 0) could flip rows of R.
    """
    R, xi = _pair(R, xi, "xi")
    Q, T = np.linalg.qr(np.swapaxes(R + xi, -1, -2))  # Q (..., d, r), T (..., r, r)
    signs = np.sign(np.diagonal(T, axis1=-2, axis2=-1))  # (..., r)
    signs[signs == 0] = 1
    return np.swapaxes(Q * signs[..., None, :], -1, -2)


def orthonormality_error(R: np.ndarray) -> float:
    """max |R Rᵀ − I_r| over all entries (of every matrix of a stack). R: (..., r, d)."""
    R = _check.array("R", R, min_ndim=2)
    r = R.shape[-2]
    return float(np.max(np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(r, dtype=R.dtype))))


def random_stiefel(r: int, d: int, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """A Haar-distributed point of St(r, d): Qᵀ from the sign-fixed QR of a Gaussian (d, r).

    Returns (r, d) of the given dtype (computed in float64, then cast).
    """
    r = _check.positive_int("r", r)
    d = _check.positive_int("d", d)
    if r > d:
        raise ValueError(f"rank r={r} is greater than hidden size d={d}; need 1 <= r <= d")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    Z = rng.standard_normal((d, r))  # (d, r)
    Q, T = np.linalg.qr(Z)
    signs = np.sign(np.diag(T))
    signs[signs == 0] = 1
    return np.ascontiguousarray((Q * signs).T).astype(dtype)
