"""PyTorch mirror of minireft.optim, plus `ReftOptimizer`, a torch.optim.Optimizer.

AdamW (exactly torch.optim.AdamW's update) for W, b, W1, W2; Riemannian Adam on
St(r, d) for every R. A group marked manifold="stiefel" has no weight decay: the
constructor refuses one, and its update never reads the field.
"""

from __future__ import annotations

import math

import torch

from minireft.torch import _check
from minireft.torch.stiefel import project_tangent, retract_polar, retract_qr

RETRACTIONS = {"polar": retract_polar, "qr": retract_qr}


def _state(param, state):
    if state is None:
        return 0, torch.zeros_like(param), torch.zeros_like(param)
    for key in ("step", "exp_avg", "exp_avg_sq"):
        if key not in state:
            raise ValueError(f"state is missing {key!r}; pass state=None to start a fresh one")
    return int(state["step"]), state["exp_avg"], state["exp_avg_sq"]


def _moments(grad, m, v, beta1, beta2):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    return m, v


def _adam_direction(m, v, t, beta1, beta2, eps):
    """(m / (1 − β1ᵗ)) / (sqrt(v) / sqrt(1 − β2ᵗ) + ε)."""
    bias1 = 1 - beta1**t
    bias2_sqrt = math.sqrt(1 - beta2**t)
    return (m / bias1) / (v.sqrt() / bias2_sqrt + eps)


def adamw_step(param, grad, state, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """θ ← θ(1 − lr·λ); Adam moments; θ ← θ − lr·m̂/(sqrt(v̂) + ε). Returns (new_param, new_state)."""
    _check.tensor("param", param)
    _check.tensor("grad", grad)
    _check.same_dtype(param=param, grad=grad)
    _check.shape("grad", grad, param.shape)
    beta1, beta2 = betas
    t, m, v = _state(param, state)
    decayed = param * (1 - lr * weight_decay)
    m, v = _moments(grad, m, v, beta1, beta2)
    t += 1
    new_param = decayed - lr * _adam_direction(m, v, t, beta1, beta2, eps)
    return new_param, {"step": t, "exp_avg": m, "exp_avg_sq": v}


def riemannian_adam_step(R, grad, state, *, lr, betas=(0.9, 0.999), eps=1e-8, retraction="polar"):
    """g = P_R(∇L); Adam moments of g; ξ = −lr·P_R(m̂/(sqrt(v̂) + ε)); R' = retract(R, ξ); m ← P_R'(m)."""
    _check.tensor("R", R, ndim=2)
    _check.tensor("grad", grad, ndim=2)
    _check.same_dtype(R=R, grad=grad)
    _check.low_rank("R", R)
    _check.shape("grad", grad, R.shape)
    if retraction not in RETRACTIONS:
        raise ValueError(f"retraction must be one of {sorted(RETRACTIONS)}, got {retraction!r}")
    beta1, beta2 = betas
    t, m, v = _state(R, state)
    g = project_tangent(R, grad)
    m, v = _moments(g, m, v, beta1, beta2)
    t += 1
    xi = -lr * project_tangent(R, _adam_direction(m, v, t, beta1, beta2, eps))
    new_R = RETRACTIONS[retraction](R, xi)
    m = project_tangent(new_R, m)
    return new_R, {"step": t, "exp_avg": m, "exp_avg_sq": v}


class ReftOptimizer(torch.optim.Optimizer):
    """The spec's step as a torch optimizer.

    Param groups take lr, betas, eps, weight_decay, and manifold: None (AdamW) or
    "stiefel" (Riemannian Adam with `retraction`, no weight decay). Works with
    torch.optim.lr_scheduler, which edits each group's lr.

    >>> opt = ReftOptimizer.for_named_parameters(model.named_parameters(), lr=1e-3, weight_decay=0.01)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, retraction="polar"):
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (len(betas) == 2 and all(0 <= x < 1 for x in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if retraction not in RETRACTIONS:
            raise ValueError(f"retraction must be one of {sorted(RETRACTIONS)}, got {retraction!r}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                        "manifold": None, "retraction": retraction}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["manifold"] not in (None, "stiefel"):
                raise ValueError(f"manifold must be None or 'stiefel', got {group['manifold']!r}")
            if group["manifold"] == "stiefel":
                if group["weight_decay"] != 0:
                    raise ValueError(
                        "weight decay on a Stiefel group would pull R off the manifold (pyreft's "
                        "failure); set weight_decay=0 for the group with manifold='stiefel'"
                    )
                for p in group["params"]:
                    if p.dim() != 2 or p.shape[0] > p.shape[1]:
                        raise ValueError(f"a Stiefel parameter must be (r, d) with r <= d, got {tuple(p.shape)}")

    @classmethod
    def for_named_parameters(cls, named_parameters, *, lr=1e-3, weight_decay=0.0, **kwargs):
        """Two groups: every trainable parameter named "*.R" on St(r, d), the rest under AdamW."""
        stiefel, euclidean = [], []
        for name, p in named_parameters:
            if p.requires_grad:
                (stiefel if name.split(".")[-1] == "R" else euclidean).append(p)
        groups = [g for g in (
            {"params": stiefel, "manifold": "stiefel", "weight_decay": 0.0},
            {"params": euclidean, "weight_decay": weight_decay},
        ) if g["params"]]
        return cls(groups, lr=lr, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p] or None
                kwargs = {"lr": group["lr"], "betas": group["betas"], "eps": group["eps"]}
                if group["manifold"] == "stiefel":
                    new_p, new_state = riemannian_adam_step(
                        p, p.grad, state, retraction=group["retraction"], **kwargs)
                else:
                    new_p, new_state = adamw_step(
                        p, p.grad, state, weight_decay=group["weight_decay"], **kwargs)
                p.copy_(new_p)
                self.state[p] = new_state
        return loss
