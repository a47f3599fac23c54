"""Randomised NumPy-spec vs PyTorch cross-checks, printed as a table; exits 1 beyond tolerance.

    python scripts/crosscheck.py                      # functional checks + a tiny random Llama
    python scripts/crosscheck.py --model smollm2      # the same on SmolLM2-135M-Instruct

Checks: forward; VJP (spec vs the torch analytic backward vs torch autograd);
Stiefel operations; optimizer trajectories over 100 steps; and on a Hugging Face
model, the hidden states captured at an intervened layer, edited by the NumPy spec
with the trained adapter's parameters (read back with minireft.io alone), against
the states the PyTorch path produced.

Each check is measured and judged as the conformance checker does (minireft.conformance:
`compare`, and the corpus tolerance of its kind in `TOLERANCES`): expected = the NumPy spec
in float64, rel err = max|got − expected| / max|expected|, pass ⇔ abs err ≤ atol + rtol·max|expected|.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np
import torch

import minireft
import minireft.torch as mt
from minireft.conformance import TOLERANCES, Result, compare, format_table

DTYPES = {"float64": (np.float64, torch.float64), "float32": (np.float32, torch.float32)}


class Table:
    """Checks in the conformance report's format; each judged with its kind's corpus tolerance
    ("value", "gradient", "retraction", "deviation", "trajectory": minireft.conformance.TOLERANCES)."""

    def __init__(self):
        self.results = []
        self.guards = []  # (text, ok): conditions that are not comparisons with the spec

    def add(self, check, dtype, got, expected, kind):
        rtol, atol = TOLERANCES[kind][dtype]
        c = _compare(got, expected, rtol, atol)
        self.results.append(Result(check, dtype, "PASS" if c.ok else "FAIL", rtol, atol, [c]))

    def guard(self, text, ok):
        self.guards.append((text, bool(ok)))

    def print(self):
        print(format_table(self.results))
        details = [m for r in self.results if r.failed for m in r.messages()]
        if details:
            print("\nfailures:\n" + "\n".join(f"  {m}" for m in details))
        for text, ok in self.guards:
            print(f"{text}: {'ok' if ok else 'FAIL'}")
        failed = len(details) + sum(not ok for _, ok in self.guards)
        print(f"{len(self.results) + len(self.guards) - failed} passed, {failed} failed")
        return failed


def check_functions(table: Table, dtype: str, trials: int, rng: np.random.Generator):
    npd, _td = DTYPES[dtype]
    for kind in ("loreft", "direft"):
        spec, mirror = getattr(minireft, kind), getattr(mt, kind)
        worst = {name: (0.0, None, None) for name in ("forward", "vjp", "backward", "autograd")}
        for _ in range(trials):
            d = int(rng.integers(1, 97))
            r = int(rng.integers(1, min(d, 8) + 1))
            params = spec.init(d, r, rng, dtype=np.float64)
            h = rng.standard_normal((int(rng.integers(1, 4)), int(rng.integers(1, 6)), d))
            dout = rng.standard_normal(h.shape)
            want_out = spec.forward(h, **params)
            want_grads = spec.vjp(h, **params, dout=dout)
            tparams = [torch.from_numpy(params[k].astype(npd)) for k in spec.PARAMS]
            th, tg = torch.from_numpy(h.astype(npd)), torch.from_numpy(dout.astype(npd))
            got_out = mirror.forward(th, *tparams)
            got_vjp = mirror.vjp(th, *tparams, tg)
            leaves = [x.clone().requires_grad_() for x in [th, *tparams]]
            mirror.apply(*leaves).backward(tg)
            got_backward = [x.grad for x in leaves]
            leaves = [x.clone().requires_grad_() for x in [th, *tparams]]
            mirror.forward(*leaves).backward(tg)
            got_autograd = [x.grad for x in leaves]
            pairs = {"forward": [(got_out, want_out)], "vjp": list(zip(got_vjp, want_grads)),
                     "backward": list(zip(got_backward, want_grads)),
                     "autograd": list(zip(got_autograd, want_grads))}
            for name, items in pairs.items():
                for got, want in items:
                    err = _rel(got, want)
                    if err >= worst[name][0]:
                        worst[name] = (err, got, want)
        for name, (_, got, want) in worst.items():
            label = {"forward": "forward", "vjp": "vjp (functional)", "backward": "vjp (autograd.Function)",
                     "autograd": "vjp (torch autograd of forward)"}[name]
            table.add(f"{kind} {label}", dtype, got, want, "value" if name == "forward" else "gradient")


def _compare(got, expected, rtol=0.0, atol=0.0):
    """minireft.conformance.compare of got (a tensor or an array) with the float64 expected."""
    got = got if isinstance(got, np.ndarray) else mt.to_numpy(got)
    return compare("out", got, np.asarray(expected, dtype=np.float64), rtol, atol)


def _rel(got, expected) -> float:
    return _compare(got, expected).rel_err


def check_stiefel(table: Table, dtype: str, trials: int, rng: np.random.Generator):
    npd, _ = DTYPES[dtype]
    for fn in ("project_tangent", "retract_polar", "retract_qr"):
        worst = (-1.0, None, None)
        for _ in range(trials):
            d = int(rng.integers(1, 97))
            r = int(rng.integers(1, min(d, 8) + 1))
            R = minireft.stiefel.random_stiefel(r, d, rng)
            G = 0.5 * rng.standard_normal((r, d))
            want = getattr(minireft.stiefel, fn)(R, G)
            got = getattr(mt.stiefel, fn)(torch.from_numpy(R.astype(npd)), torch.from_numpy(G.astype(npd)))
            if _rel(got, want) > worst[0]:
                worst = (_rel(got, want), got, want)
        table.add(f"stiefel.{fn}", dtype, worst[1], worst[2],
                  "value" if fn == "project_tangent" else "retraction")


def check_optim(table: Table, dtype: str, rng: np.random.Generator, steps: int = 100):
    npd, _ = DTYPES[dtype]
    for retraction in ("polar", "qr"):
        R = minireft.stiefel.random_stiefel(4, 48, rng)
        W = rng.standard_normal((4, 48))
        tR, tW = torch.from_numpy(R.astype(npd)), torch.from_numpy(W.astype(npd))
        sR = sW = tsR = tsW = None
        for _ in range(steps):
            gR, gW = rng.standard_normal(R.shape), rng.standard_normal(W.shape)
            R, sR = minireft.optim.riemannian_adam_step(R, gR, sR, lr=0.01, retraction=retraction)
            W, sW = minireft.optim.adamw_step(W, gW, sW, lr=0.01, weight_decay=0.1)
            tR, tsR = mt.optim.riemannian_adam_step(tR, torch.from_numpy(gR.astype(npd)), tsR, lr=0.01,
                                                    retraction=retraction)
            tW, tsW = mt.optim.adamw_step(tW, torch.from_numpy(gW.astype(npd)), tsW, lr=0.01, weight_decay=0.1)
        table.add(f"riemannian_adam {retraction}, {steps} steps: R", dtype, tR, R, "trajectory")
        table.add(f"adamw (weight decay 0.1), {steps} steps: W ({retraction} run)", dtype, tW, W,
                  "trajectory")
        eye = np.eye(R.shape[0])
        table.add(f"orthonormality RRᵀ after {steps} {retraction} steps", dtype,
                  (tR @ tR.T).double(), eye, "deviation")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval(), None


def check_model(table: Table, model_name: str, steps: int):
    """Train briefly, reload the adapter with NumPy alone, replay the edit with the spec."""
    from minireft.hf import attach

    if model_name == "tiny":
        model, _ = tiny_llama()
    else:
        from minireft.hf.loading import load_model

        model, _ = load_model(model_name)
    n_layers = model.config.num_hidden_layers
    layer = n_layers // 2
    config = minireft.ReftConfig(layers=[layer], rank=4, positions="f2+l3", tied=False)
    reft = attach(model, config, seed=0)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding in row 1
    mask[2, :1] = 0
    opt = mt.ReftOptimizer.for_named_parameters(reft.named_trainable_parameters(), lr=1e-2)
    target = torch.randint(0, vocab, ids.shape, generator=gen)
    for _ in range(steps):
        logits = reft(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits[mask.bool()], target[mask.bool()])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with tempfile.TemporaryDirectory() as tmp:
        reft.save_pretrained(tmp)
        loaded_config, params = minireft.io.load_adapter(tmp)
    block = _blocks(reft)[layer]
    captured = {}
    pre = block.register_forward_hook(lambda m, a, out: captured.__setitem__("before", _hidden(out).clone()),
                                      prepend=True)
    post = block.register_forward_hook(lambda m, a, out: captured.__setitem__("after", _hidden(out).clone()))
    with torch.no_grad():
        reft(input_ids=ids, attention_mask=mask)
    pre.remove()
    post.remove()
    before = captured["before"].double().numpy()  # (B, n, d)
    expected = before.copy()
    prefix, suffix = loaded_config.prefix_suffix
    for row in range(ids.shape[0]):
        start = int((mask[row] == 0).sum())
        pre_pos, suf_pos = minireft.positions.intervention_positions(int(mask[row].sum()), prefix, suffix)
        for group, pos in (("prefix", pre_pos), ("suffix", suf_pos)):
            if pos:
                p = {k: params[f"{layer}.{group}.{k}"].astype(np.float64) for k in ("R", "W", "b")}
                idx = [start + i for i in pos]
                expected[row, idx] = minireft.loreft.forward(before[row, idx], **p)
    # A float32 edit of float32 states against the float64 spec: a corpus float32 forward.
    table.add(f"{model_name}: layer {layer} hidden states vs spec", "float32", captured["after"], expected,
              "value")
    # Guard against a vacuous pass: the trained edit must move the states it touches.
    moved = float(np.abs(expected - before).max())
    table.guard(f"{model_name}: edit size max|Φ(h) − h| = {moved:.2e} (must be > 1e-3)", moved > 1e-3)


def _blocks(reft):
    from minireft.hf.blocks import find_blocks

    return find_blocks(reft.model, reft.config.module_path)[1]


def _hidden(out):
    return out[0] if isinstance(out, tuple) else out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="random cases per functional check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="tiny", help="'tiny' (a random Llama), 'smollm2', or a model path")
    parser.add_argument("--steps", type=int, default=5, help="training steps before the model check")
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rng = np.random.default_rng(args.seed)
    table = Table()
    for dtype in ("float64", "float32"):
        check_functions(table, dtype, args.trials, rng)
        check_stiefel(table, dtype, args.trials, rng)
        check_optim(table, dtype, rng)
    if not args.skip_model:
        check_model(table, args.model, args.steps)
    return 1 if table.print() else 0


if __name__ == "__main__":
    sys.exit(main())
