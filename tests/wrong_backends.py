"""Deliberately wrong backends, each the NumPy spec with one classic porting bug.

The checker must fail each of them, on exactly the cases the bug reaches:

    TRANSPOSED_R    R read as pyreft's d×r weight (Δ = H Wᵀ + b − H R, Out = H + Δ Rᵀ);
                    the shapes only line up when r = d, elsewhere it raises
    FLIPPED_DR      loreft.vjp returns −dR
    UNSIGNED_QR     retract_qr without the sign fix, also inside riemannian_adam_step

Use one from the command line as `--backend wrong_backends:FLIPPED_DR` with tests/ on
the Python path.
"""

from __future__ import annotations

import math
import types

import numpy as np

import minireft
from minireft import stiefel

# The rest of the family (NoReFT, ConsReFT, LobiReFT, orthogonal DiReFT), the spec's own in
# every wrong backend: each bug below is a LoReFT or optimizer bug.
FAMILY = {kind: getattr(minireft, kind) for kind in ("noreft", "consreft", "lobireft", "ortho_direft")}

# ---------------------------------------------------------------- R transposed


def _transposed_forward(h, R, W, b):
    """Φ(h) = h + R(W h + b − Rᵀ h): R taken as the d×r matrix pyreft stores."""
    d = h.shape[-1]
    H = h.reshape(-1, d)  # (N, d)
    delta = H @ W.T + b - H @ R  # (N, d) @ (r, d): only valid when r = d
    return (H + delta @ R.T).reshape(h.shape)


def _transposed_vjp(h, R, W, b, dout):
    """The exact VJP of the transposed forward (what autograd would give the porter)."""
    dh, dRt, dW, db = minireft.loreft.vjp(h, np.ascontiguousarray(R.T), W, b, dout)
    return dh, dRt.T, dW, db


TRANSPOSED_R = types.SimpleNamespace(
    loreft=types.SimpleNamespace(forward=_transposed_forward, vjp=_transposed_vjp),
    direft=minireft.direft, stiefel=minireft.stiefel, optim=minireft.optim,
    positions=minireft.positions, edit=minireft.edit, edit_vjp=minireft.edit_vjp,
    packed_edit=minireft.packed_edit, **FAMILY)

# ---------------------------------------------------------------- sign of dR


def _flipped_vjp(h, R, W, b, dout):
    dh, dR, dW, db = minireft.loreft.vjp(h, R, W, b, dout)
    return dh, -dR, dW, db


FLIPPED_DR = types.SimpleNamespace(
    loreft=types.SimpleNamespace(forward=minireft.loreft.forward, vjp=_flipped_vjp),
    direft=minireft.direft, stiefel=minireft.stiefel, optim=minireft.optim,
    positions=minireft.positions, edit=minireft.edit, edit_vjp=minireft.edit_vjp,
    packed_edit=minireft.packed_edit, **FAMILY)

# ---------------------------------------------------------------- QR without the sign fix


def _unsigned_retract_qr(R, xi):
    """Qᵀ from (R + ξ)ᵀ = Q T, as LAPACK returns it: diag(T) may be negative."""
    Q, _ = np.linalg.qr((R + xi).T)  # Q (d, r)
    return np.ascontiguousarray(Q.T)


_RETRACTIONS = {"polar": stiefel.retract_polar, "qr": _unsigned_retract_qr}


def _riemannian_adam_step(R, grad, state, *, lr, betas=(0.9, 0.999), eps=1e-8, retraction="polar"):
    """The spec's step, written out, with the unsigned QR retraction."""
    beta1, beta2 = betas
    if state is None:
        state = {"step": 0, "exp_avg": np.zeros_like(R), "exp_avg_sq": np.zeros_like(R)}
    t = state["step"] + 1
    g = stiefel.project_tangent(R, grad)  # (r, d)
    m = beta1 * state["exp_avg"] + (1 - beta1) * g
    v = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g
    direction = (m / (1 - beta1**t)) / (np.sqrt(v) / math.sqrt(1 - beta2**t) + eps)
    new_R = _RETRACTIONS[retraction](R, -lr * stiefel.project_tangent(R, direction))
    return new_R, {"step": t, "exp_avg": stiefel.project_tangent(new_R, m), "exp_avg_sq": v}


UNSIGNED_QR = types.SimpleNamespace(
    loreft=minireft.loreft, direft=minireft.direft, positions=minireft.positions, **FAMILY,
    edit=minireft.edit, edit_vjp=minireft.edit_vjp, packed_edit=minireft.packed_edit,
    stiefel=types.SimpleNamespace(
        project_tangent=stiefel.project_tangent, retract_polar=stiefel.retract_polar,
        retract_qr=_unsigned_retract_qr, orthonormality_error=stiefel.orthonormality_error),
    optim=types.SimpleNamespace(adamw_step=minireft.optim.adamw_step,
                                riemannian_adam_step=_riemannian_adam_step))
