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
    """g = P_R(∇L); Adam moments of g; ξ = −lr·P_R(m̂/(sqrt(v̂) + ε)); R' = retract(R, ξ); m ← P_R'(m).

    R, grad: (r, d) or stacks (..., r, d) sharing one step count."""
    _check.tensor("R", R, min_ndim=2)
    _check.tensor("grad", grad, min_ndim=2)
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
        """One step of every parameter that has a gradient, all or nothing.

        Every R of one shape, dtype, device and step count is stepped as one stack
        (..., r, d): one batched retraction instead of one SVD per R. New values are
        computed first and written in one `torch._foreach_copy_` at the end, so an
        interrupt (Ctrl-C) leaves either the old step or the new one, never a mix, with
        no copy of the parameters taken to undo it.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        updates = []  # (param, new value, new state)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            kwargs = {"lr": group["lr"], "betas": group["betas"], "eps": group["eps"]}
            if group["manifold"] == "stiefel":
                for stack in _stacks(params, self.state):
                    updates += _stiefel_updates(stack, self.state, group["retraction"], kwargs)
            else:
                for p in params:
                    new_p, new_state = adamw_step(p, p.grad, self.state[p] or None,
                                                  weight_decay=group["weight_decay"], **kwargs)
                    updates.append((p, new_p, new_state))
        if updates:
            torch._foreach_copy_([p for p, _, _ in updates], [new for _, new, _ in updates])
            for p, _, new_state in updates:
                self.state[p] = new_state
        return loss


def _stacks(params, state) -> list[list]:
    """Parameters grouped by (shape, dtype, device, step count), in first-seen order."""
    stacks: dict[tuple, list] = {}
    for p in params:
        key = (tuple(p.shape), p.dtype, p.device, int(state[p].get("step", 0)) if state[p] else 0)
        stacks.setdefault(key, []).append(p)
    return list(stacks.values())


def _stiefel_updates(stack, state, retraction, kwargs) -> list[tuple]:
    """riemannian_adam_step on the stack (K, r, d) of `stack`'s R; the K updates, unstacked."""
    R = torch.stack(stack)  # (K, r, d)
    grad = torch.stack([p.grad for p in stack])  # (K, r, d)
    old = [state[p] or None for p in stack]
    stacked_state = None if old[0] is None else {
        "step": old[0]["step"],
        "exp_avg": torch.stack([s["exp_avg"] for s in old]),
        "exp_avg_sq": torch.stack([s["exp_avg_sq"] for s in old]),
    }
    new_R, new = riemannian_adam_step(R, grad, stacked_state, retraction=retraction, **kwargs)
    return [(p, new_R[k], {"step": new["step"], "exp_avg": new["exp_avg"][k],
                           "exp_avg_sq": new["exp_avg_sq"][k]})
            for k, p in enumerate(stack)]
