"""One optimizer step, as pure functions: parameters and state in, new ones out.

W, b (and DiReFT's W1, W2) take AdamW exactly as torch.optim.AdamW computes it.
R takes Riemannian Adam on St(r, d): the gradient and the update are projected
onto the tangent space at R, the step is retracted onto the manifold, and the
first moment is transported to the new point by projection. R has no weight
decay: riemannian_adam_step has no such argument, so decay cannot reach R.

A state is a dict {"step": t, "exp_avg": m, "exp_avg_sq": v}; None starts one.
"""

from __future__ import annotations

import numpy as np

from minireft import _check
from minireft.stiefel import project_tangent, retract_polar, retract_qr

RETRACTIONS = {"polar": retract_polar, "qr": retract_qr}


def _hyper(lr, betas, eps) -> tuple[float, float, float, float]:
    lr = float(lr)
    if not np.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= float(x) < 1.0 for x in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not float(eps) > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return lr, float(betas[0]), float(betas[1]), float(eps)


def _state(param: np.ndarray, state: dict | None) -> tuple[int, np.ndarray, np.ndarray]:
    if state is None:
        return 0, np.zeros_like(param), np.zeros_like(param)
    for key in ("step", "exp_avg", "exp_avg_sq"):
        if key not in state:
            raise ValueError(f"state is missing {key!r}; pass state=None to start a fresh one")
    for key in ("exp_avg", "exp_avg_sq"):
        _check.shape(f"state[{key!r}]", state[key], param.shape)
    return int(state["step"]), state["exp_avg"], state["exp_avg_sq"]


def _moments(grad, m, v, beta1, beta2):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    return m, v


def _adam_direction(m, v, t, beta1, beta2, eps):
    """(m / (1 − β1ᵗ)) / (sqrt(v) / sqrt(1 − β2ᵗ) + ε), in torch.optim.AdamW's order."""
    bias1 = 1 - beta1**t
    # A Python float, as in torch; np.sqrt would return a float64 scalar that promotes float32.
    bias2_sqrt = (1 - beta2**t) ** 0.5
    return (m / bias1) / (np.sqrt(v) / bias2_sqrt + eps)


def adamw_step(param, grad, state, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """One AdamW step (Loshchilov & Hutter; torch.optim.AdamW, amsgrad=False):

        θ ← θ (1 − lr·λ)                                  decoupled weight decay
        m ← β1 m + (1 − β1) g ;  v ← β2 v + (1 − β2) g⊙g ;  t ← t + 1
        θ ← θ − lr · (m / (1 − β1ᵗ)) / (sqrt(v) / sqrt(1 − β2ᵗ) + ε)

    param, grad: any shape, one dtype. Returns (new_param, new_state).
    """
    param = _check.array("param", param)
    grad = _check.array("grad", grad)
    _check.same_dtype(param=param, grad=grad)
    _check.shape("grad", grad, param.shape)
    _check.finite("grad", grad)
    lr, beta1, beta2, eps = _hyper(lr, betas, eps)
    if not float(weight_decay) >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    t, m, v = _state(param, state)
    decayed = param * (1 - lr * float(weight_decay))
    m, v = _moments(grad, m, v, beta1, beta2)
    t += 1
    new_param = decayed - lr * _adam_direction(m, v, t, beta1, beta2, eps)
    return new_param.astype(param.dtype), {"step": t, "exp_avg": m, "exp_avg_sq": v}


def riemannian_adam_step(R, grad, state, *, lr, betas=(0.9, 0.999), eps=1e-8, retraction="polar"):
    """One Riemannian Adam step on St(r, d) (Bécigneul & Ganea 2019, Stiefel form):

        g  = P_R(∇_R L)
        m ← β1 m + (1 − β1) g ;  v ← β2 v + (1 − β2) g⊙g ;  t ← t + 1
        ξ  = −lr · P_R( (m / (1 − β1ᵗ)) / (sqrt(v) / sqrt(1 − β2ᵗ) + ε) )
        R' = retract(R, ξ) ;  m ← P_R'(m)

    R, grad: (r, d), grad the Euclidean gradient; or stacks (..., r, d) of R that share
    one step count, each stepped on its own. retraction: "polar" or "qr".
    Returns (new_R, new_state); new_R has orthonormal rows whatever the step size.
    """
    R = _check.array("R", R, min_ndim=2)
    grad = _check.array("grad", grad, min_ndim=2)
    _check.same_dtype(R=R, grad=grad)
    _check.low_rank("R", R)
    _check.shape("grad", grad, R.shape)
    _check.finite("grad", grad)
    if retraction not in RETRACTIONS:
        raise ValueError(f"retraction must be one of {sorted(RETRACTIONS)}, got {retraction!r}")
    lr, beta1, beta2, eps = _hyper(lr, betas, eps)
    t, m, v = _state(R, state)
    g = project_tangent(R, grad)  # (..., r, d), Riemannian gradient
    m, v = _moments(g, m, v, beta1, beta2)
    t += 1
    xi = -lr * project_tangent(R, _adam_direction(m, v, t, beta1, beta2, eps))
    new_R = RETRACTIONS[retraction](R, xi)
    m = project_tangent(new_R, m)  # vector transport by projection
    return new_R, {"step": t, "exp_avg": m, "exp_avg_sq": v}
