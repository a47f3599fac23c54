"""A whole LoReFT finetune in NumPy, in one file: no torch, no autograd.

A small random model is frozen. A LoReFT edit Φ(h) = h + Rᵀ(W h + b − R h) is inserted
into its hidden layer at the positions the paper's rule picks ("f2+l2": the first two
and the last two tokens of each prompt), and only R, W, b are trained, so that the
model's outputs move to new targets. The targets come from the same model edited by a
hidden "teacher" intervention of lower rank, so they are reachable and the loss can fall
far. The gradient is written out by hand: the frozen layers after the edit are
backpropagated here in NumPy, the edit itself by minireft.loreft.vjp. R takes Riemannian
Adam (it stays on the Stiefel manifold, RRᵀ = I, at every step); W and b take AdamW.

The model, for a prompt of n token ids (B prompts of the same length at a time):

    x  = E[tokens]                                   (B, n, d)  embeddings
    h1 = mix(block₁(x))                              (B, n, d)  hidden layer
    h1[:, P] ← Φ(h1[:, P])                                      the edit, at positions P
    h2 = mix(block₂(h1))                             (B, n, d)
    y  = h2[:, n−1] Uᵀ                               (B, k)     read out at the last token

    block(x) = x + relu(x Aᵀ + c) Bᵀ                 a residual MLP, token by token
    mix(x)   = x + M x,  M_ts = 1/(t+1) for s <= t   causal mean: earlier tokens reach later ones

    loss = ½ · mean over prompts of ‖y − target‖²

Run:  python examples/numpy_walkthrough.py [--steps 300] [--seed 0] [--retraction polar|qr]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from minireft import loreft
from minireft.optim import adamw_step, riemannian_adam_step
from minireft.positions import intervention_positions, parse_positions
from minireft.stiefel import orthonormality_error

VOCAB, D, HIDDEN, OUT = 12, 16, 32, 4  # vocabulary, hidden size d, MLP width, outputs k
LENGTHS = (1, 2, 3, 5, 8, 13)  # prompt lengths: short ones exercise the position rule
PER_LENGTH = 16  # prompts of each length


# ---------------------------------------------------------------- the frozen model


def make_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Frozen weights, float64."""

    def block():
        return {
            "A": rng.standard_normal((HIDDEN, D)) / np.sqrt(D),  # (m, d)
            "c": 0.1 * rng.standard_normal(HIDDEN),  # (m,)
            "B": rng.standard_normal((D, HIDDEN)) / np.sqrt(HIDDEN),  # (d, m)
        }

    return {
        "E": rng.standard_normal((VOCAB, D)),  # (V, d)
        "block1": block(),
        "block2": block(),
        "U": rng.standard_normal((OUT, D)) / np.sqrt(D),  # (k, d)
    }


def causal_mean(n: int) -> np.ndarray:
    """M (n, n): M_ts = 1/(t+1) for s <= t, else 0."""
    return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]


def block_forward(x, w):
    """x + relu(x Aᵀ + c) Bᵀ; returns the output and what the backward pass needs."""
    pre = x @ w["A"].T + w["c"]  # (B, n, m)
    return x + np.maximum(pre, 0) @ w["B"].T, pre


def block_backward(dout, pre, w):
    """Pullback of block: d/dx [x + relu(x Aᵀ + c) Bᵀ]ᵀ dout = dout + ((dout B) ⊙ 1[pre > 0]) A."""
    return dout + ((dout @ w["B"]) * (pre > 0)) @ w["A"]


def mix_forward(x, M):
    """x + M x along the token axis: (B, n, d)."""
    return x + np.einsum("ts,bsd->btd", M, x)


def mix_backward(dout, M):
    """Pullback of x + M x is dout + Mᵀ dout."""
    return dout + np.einsum("ts,btd->bsd", M, dout)


def edit_positions(n: int, positions: str) -> list[int]:
    """Tied weights: the prefix and suffix positions share one intervention."""
    prefix, suffix = intervention_positions(n, *parse_positions(positions))
    return prefix + suffix


def hidden_layer(model, tokens):
    """h1 = mix(block₁(E[tokens])): the frozen part before the edit, (B, n, d)."""
    x = model["E"][tokens]  # (B, n, d)
    z, _ = block_forward(x, model["block1"])
    return mix_forward(z, causal_mean(tokens.shape[1]))


def head_forward(model, h1):
    """y = mix(block₂(h1))[:, −1] Uᵀ, and the cache for its backward pass."""
    M = causal_mean(h1.shape[1])
    z, pre = block_forward(h1, model["block2"])
    h2 = mix_forward(z, M)
    return h2[:, -1] @ model["U"].T, (pre, M)  # (B, k)


def head_backward(model, dy, cache, n):
    """Pullback of the frozen layers after the edit: dy (B, k) → dh1 (B, n, d)."""
    pre, M = cache
    dh2 = np.zeros((dy.shape[0], n, D))  # (B, n, d): only the last token is read out
    dh2[:, -1] = dy @ model["U"]
    dz = mix_backward(dh2, M)
    return block_backward(dz, pre, model["block2"])


def outputs(model, data, edit, positions):
    """Model outputs per length group with a LoReFT edit {R, W, b} (or None)."""
    ys = {}
    for n, tokens in data.items():
        h1 = hidden_layer(model, tokens)
        if edit is not None:
            P = edit_positions(n, positions)
            h1[:, P] = loreft.forward(h1[:, P], **edit)
        ys[n] = head_forward(model, h1)[0]
    return ys


# ---------------------------------------------------------------- loss and gradient


def loss_and_grads(model, data, targets, h1s, params, positions):
    """loss = ½ mean ‖y − target‖² over all prompts, and its gradient wrt R, W, b."""
    total = sum(len(t) for t in data.values())
    loss = 0.0
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    for n in data:
        P = edit_positions(n, positions)
        h1 = h1s[n].copy()  # (B, n, d), frozen: computed once
        h_sel = h1[:, P]  # (B, |P|, d)
        h1[:, P] = loreft.forward(h_sel, **params)
        y, cache = head_forward(model, h1)  # (B, k)
        err = y - targets[n]  # (B, k)
        loss += 0.5 * float(np.sum(err * err)) / total
        dh1 = head_backward(model, err / total, cache, n)  # (B, n, d)
        _, dR, dW, db = loreft.vjp(h_sel, params["R"], params["W"], params["b"], dh1[:, P])
        grads["R"] += dR
        grads["W"] += dW
        grads["b"] += db
    return loss, grads


# ---------------------------------------------------------------- the run


def setup(seed: int, positions: str, rank: int):
    rng = np.random.default_rng(seed)
    model = make_model(rng)
    data = {n: rng.integers(0, VOCAB, size=(PER_LENGTH, n)) for n in LENGTHS}
    teacher = loreft.init(D, 2, rng, kind="paper", dtype=np.float64)
    teacher["W"] *= 4.0  # a strong edit, so the targets are far from the base outputs
    teacher["b"] *= 4.0
    targets = outputs(model, data, teacher, positions)
    h1s = {n: hidden_layer(model, tokens) for n, tokens in data.items()}
    params = loreft.init(D, rank, rng, kind="identity", dtype=np.float64)  # starts as the base model
    return model, data, targets, h1s, params


def ascii_plot(values, width: int = 60, height: int = 10) -> str:
    """log10(values) against step, as text."""
    logs = np.log10(np.asarray(values))
    cols = np.linspace(0, len(logs) - 1, min(width, len(logs))).round().astype(int)
    pts = logs[cols]
    lo, hi = float(pts.min()), float(pts.max())
    rows = np.zeros(len(pts), int) if hi == lo else np.round((pts - lo) / (hi - lo) * (height - 1)).astype(int)
    lines = []
    for level in range(height - 1, -1, -1):
        label = lo + (hi - lo) * level / max(height - 1, 1)
        lines.append(f"{label:8.2f} |" + "".join("*" if r == level else " " for r in rows))
    lines.append(" " * 9 + "+" + "-" * len(pts))
    lines.append(" " * 10 + f"step 0{'':>{max(len(pts) - 12, 1)}}{len(values) - 1}   (log10 loss)")
    return "\n".join(lines)


def run(steps: int = 300, seed: int = 0, retraction: str = "polar", positions: str = "f2+l2",
        rank: int = 4, lr: float = 0.02, log_every: int = 25, verbose: bool = False) -> dict:
    """Train R, W, b for `steps` steps; returns the loss curve and the measurements."""
    model, data, targets, h1s, params = setup(seed, positions, rank)
    states = {"R": None, "W": None, "b": None}
    losses, worst_orth = [], orthonormality_error(params["R"])
    start = time.perf_counter()
    for step in range(steps + 1):
        loss, grads = loss_and_grads(model, data, targets, h1s, params, positions)
        losses.append(loss)
        if verbose and (step % log_every == 0 or step == steps):
            print(f"step {step:5d}  loss {loss:.6e}  max|RRᵀ − I| {orthonormality_error(params['R']):.2e}")
        if step == steps:
            break
        params["R"], states["R"] = riemannian_adam_step(
            params["R"], grads["R"], states["R"], lr=lr, retraction=retraction)
        for k in ("W", "b"):
            params[k], states[k] = adamw_step(params[k], grads[k], states[k], lr=lr)
        worst_orth = max(worst_orth, orthonormality_error(params["R"]))
    return {
        "losses": losses,
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "loss_ratio": losses[0] / losses[-1],
        "max_orthonormality_error": worst_orth,
        "params": params,
        "seconds": time.perf_counter() - start,
        "steps": steps,
        "seed": seed,
        "retraction": retraction,
        "positions": positions,
        "edited": {n: edit_positions(n, positions) for n in LENGTHS},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retraction", choices=("polar", "qr"), default="polar")
    parser.add_argument("--positions", default="f2+l2")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args(argv)
    print(f"frozen model: vocab {VOCAB}, d {D}, MLP width {HIDDEN}, {OUT} outputs; "
          f"{PER_LENGTH} prompts of each length {LENGTHS}")
    print(f"LoReFT rank {args.rank} (tied) at positions {args.positions!r} of the hidden layer:")
    for n in LENGTHS:
        print(f"  n = {n:2d}: edits {edit_positions(n, args.positions)}")
    result = run(args.steps, args.seed, args.retraction, args.positions, args.rank, args.lr, verbose=True)
    print()
    print(ascii_plot(result["losses"]))
    print()
    ok = result["loss_ratio"] >= 10 and result["max_orthonormality_error"] <= 1e-12
    print(f"loss {result['initial_loss']:.4e} → {result['final_loss']:.4e}: "
          f"fell {result['loss_ratio']:.1f}-fold in {args.steps} steps ({result['seconds']:.1f} s)")
    print(f"max|RRᵀ − I| over the run: {result['max_orthonormality_error']:.2e} (retraction {args.retraction})")
    print("OK" if ok else "FAILED: need a 10-fold fall and max|RRᵀ − I| <= 1e-12")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
