"""What LoReFT costs on SmolLM2-135M, side by side in one process, on a CPU.

1. Training step (forward, loss on the completion, backward, optimizer step) with LoReFT,
   against the floor: the same ReftModel, batch, layers and positions, with every
   Intervention swapped for `BiasOnly`, Φ(h) = h + b with b ∈ ℝ^d, through the same hooks,
   gather/where, dtype casts, loss and optimizer (AdamW on b). The floor is the cheapest
   trainable edit at those positions, so the ratio isolates the LoReFT math (and its
   Riemannian Adam step on R) from the machinery every ReFT method needs.
2. Memory of a training step, LoReFT and floor, two measures:
   - peak: the peak of torch's CPU allocations during one step, above what was allocated
     before it (torch.profiler's memory timeline: tensor CREATE/DESTROY events with their
     sizes; the frozen weights, allocated before, are not counted);
   - saved: the bytes of the distinct tensor storages autograd saves for backward during
     the forward (torch.autograd.graph.saved_tensors_hooks), the base model's weights
     excluded: the activation memory a step must hold.
   (tracemalloc cannot see torch's allocations, and ru_maxrss is a lifetime peak that a
   second measurement in the same process cannot see below.)
3. Decode: greedy generate() tokens/s with the adapter (edit at prefill only) against the
   base model with the adapter detached (no hooks at all), same prompt, same number of new
   tokens (min_new_tokens = max_new_tokens, so no early stop).

Measurements alternate A B A B ... and the ratios use medians, so slow drifts and other
processes on the machine hit both sides alike. Targets: step <= 1.10x the floor, decode
>= 0.97x the base.

    python scripts/bench_overhead.py                    # the demo's adapter config
    python scripts/bench_overhead.py --layers 4,8,12,16,20,24 --positions f7+l7 --rank 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from minireft import ReftConfig

TARGET_STEP, TARGET_DECODE = 1.10, 0.97


class BiasOnly(nn.Module):
    """The floor: Φ(h) = h + b, b ∈ ℝ^d, cast to b's dtype and back as Intervention does."""

    def __init__(self, hidden_size: int, dtype=torch.float32, device=None):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(hidden_size, dtype=dtype, device=device))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h.to(self.b.dtype) + self.b).to(h.dtype)


def swap_in(reft, modules: dict) -> dict:
    """Put modules {(layer, group): module} into reft.interventions; return the ones taken out."""
    out = {}
    for (layer, group), module in modules.items():
        out[(layer, group)] = reft.interventions[layer][group]
        reft.interventions[layer][group] = module
    return out


def floor_modules(reft) -> dict:
    return {(layer, group): BiasOnly(reft.hidden_size, dtype=m.b.dtype, device=m.b.device)
            for layer, groups in reft.interventions.items() for group, m in groups.items()}


def make_batch(tokenizer, n: int, seed: int = 0) -> dict:
    """n Rotten Tomatoes examples, chat template, left padded, as the demo trains."""
    from minireft.demo.datasets import rotten_tomatoes
    from minireft.hf.data import collate, encode_examples, pad_id

    encoded = encode_examples(tokenizer, rotten_tomatoes("train", n=n, seed=seed), chat_template=True)
    return collate(encoded, pad_id(tokenizer), padding_side="left")


def loss_of(reft, batch) -> torch.Tensor:
    from minireft.hf.training import lm_loss_sum

    out = reft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
               prompt_lengths=batch["prompt_lengths"], use_cache=False)  # position ids from the mask
    loss, n = lm_loss_sum(out.logits, batch["labels"])
    return loss / n


def train_step(reft, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_of(reft, batch).backward()
    optimizer.step()


def peak_step_bytes(step) -> int | None:
    """Peak of torch CPU allocations during step() above the level before it (None if the
    profiler's memory timeline is unavailable in this torch)."""
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                    record_shapes=True, with_stack=True) as prof:
            step()
        timeline = prof._memory_profile().timeline  # private API: (time, action, key, size)
    except Exception:  # noqa: BLE001 - an optional measurement
        return None
    level = peak = 0
    for _, action, _, size in sorted((e for e in timeline if e[0] >= 0), key=lambda e: e[0]):
        if action.name == "CREATE":
            level += size
        elif action.name == "DESTROY":
            level -= size
        peak = max(peak, level)
    return peak


def saved_bytes(reft, batch) -> int:
    """Bytes of distinct storages saved for backward by one forward + loss, weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in reft.model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(reft, batch)
    del loss
    return sum(storages.values())


def median_ms(xs) -> float:
    return 1000 * statistics.median(xs)


def bench_training(reft, batch, pairs: int, lr: float = 1e-3) -> dict:
    from minireft.torch.optim import ReftOptimizer

    loreft = {(layer, group): m for layer, groups in reft.interventions.items() for group, m in groups.items()}
    floor = floor_modules(reft)
    reft.train()
    reft.model.eval()
    opt_loreft = ReftOptimizer.for_named_parameters(reft.named_trainable_parameters(), lr=lr)
    swap_in(reft, floor)
    opt_floor = ReftOptimizer.for_named_parameters(reft.named_trainable_parameters(), lr=lr)
    floor_params = sum(p.numel() for _, p in reft.named_trainable_parameters())
    swap_in(reft, loreft)
    loreft_params = reft.num_trainable_parameters()

    variants = {"loreft": (loreft, opt_loreft), "floor": (floor, opt_floor)}
    times = {"loreft": [], "floor": []}
    for name, (modules, opt) in variants.items():  # warm-up, one step each
        swap_in(reft, modules)
        train_step(reft, opt, batch)
    for i in range(pairs):
        order = ("loreft", "floor") if i % 2 == 0 else ("floor", "loreft")  # ABBA: no fixed order bias
        for name in order:
            modules, opt = variants[name]
            swap_in(reft, modules)
            t = time.perf_counter()
            train_step(reft, opt, batch)
            times[name].append(time.perf_counter() - t)
    memory = {}
    for name, (modules, opt) in variants.items():
        swap_in(reft, modules)
        memory[name] = {"peak": peak_step_bytes(lambda: train_step(reft, opt, batch)),  # noqa: B023
                        "saved": saved_bytes(reft, batch)}
    swap_in(reft, loreft)
    reft.eval()
    return {"times": times, "memory": memory, "params": {"loreft": loreft_params, "floor": floor_params}}


def bench_decode(model, tokenizer, config, prompt_ids, new_tokens: int, pairs: int, seed: int) -> dict:
    from minireft.hf.model import attach

    ids = torch.tensor([prompt_ids])  # (1, n)
    kwargs = {"attention_mask": torch.ones_like(ids), "max_new_tokens": new_tokens,
              "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}

    def run(generate):
        t = time.perf_counter()
        with torch.no_grad():
            out = generate(ids, **kwargs)
        elapsed = time.perf_counter() - t
        assert out.shape[1] == ids.shape[1] + new_tokens
        return new_tokens / elapsed

    speeds = {"adapter": [], "base": []}
    for i in range(pairs + 1):  # pair 0 is the warm-up
        order = ("adapter", "base") if i % 2 == 0 else ("base", "adapter")
        for name in order:
            if name == "adapter":
                reft = attach(model, config, seed=seed)
                speed = run(reft.generate)
                reft.detach()
            else:
                speed = run(model.generate)
            if i > 0:
                speeds[name].append(speed)
    return speeds


def _mib(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f} MiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="14,20", help="blocks, e.g. 14,20 (the demo's)")
    parser.add_argument("--positions", default="l3")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=8, help="interleaved training-step pairs")
    parser.add_argument("--decode-pairs", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from minireft.hf.loading import load_model
    from minireft.hf.model import attach

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model()
    config = ReftConfig(layers=tuple(int(x) for x in args.layers.split(",")), rank=args.rank,
                        positions=args.positions)
    batch = make_batch(tokenizer, args.batch_size, seed=args.seed)
    B, T = batch["input_ids"].shape
    print(f"SmolLM2-135M, {args.threads} threads; LoReFT rank {config.rank}, layers {list(config.layers)}, "
          f"positions {config.positions}; batch {B} x {T} tokens (left padded, chat template)")

    reft = attach(model, config, seed=args.seed)
    train = bench_training(reft, batch, args.pairs)
    reft.detach()
    t_lo, t_fl = (median_ms(train["times"][k]) for k in ("loreft", "floor"))
    print(f"\ntraining step ({args.pairs} interleaved pairs, medians): LoReFT {t_lo:.0f} ms "
          f"({train['params']['loreft']:,} params), floor {t_fl:.0f} ms ({train['params']['floor']:,} params)")
    print("  all LoReFT ms: " + " ".join(f"{1000 * x:.0f}" for x in train["times"]["loreft"]))
    print("  all floor  ms: " + " ".join(f"{1000 * x:.0f}" for x in train["times"]["floor"]))
    mem = train["memory"]
    for key, what in (("peak", "peak torch CPU allocation during a step"),
                      ("saved", "tensors saved for backward (activations)")):
        lo, fl = mem["loreft"][key], mem["floor"][key]
        ratio = f"{lo / fl:.3f}x" if lo is not None and fl else "n/a"
        print(f"  memory, {what}: LoReFT {_mib(lo)}, floor {_mib(fl)} ({ratio})")

    from minireft.hf.data import encode_prompt

    prompt = encode_prompt(tokenizer, make_prompt(args.seed), chat_template=True)
    speeds = bench_decode(model, tokenizer, config, prompt, args.new_tokens, args.decode_pairs, args.seed)
    s_ad, s_base = (statistics.median(speeds[k]) for k in ("adapter", "base"))
    print(f"\ndecode ({args.decode_pairs} interleaved pairs, batch 1, {len(prompt)}-token prompt, "
          f"{args.new_tokens} new tokens, medians): adapter {s_ad:.1f} tok/s, base {s_base:.1f} tok/s")
    print("  all adapter tok/s: " + " ".join(f"{x:.1f}" for x in speeds["adapter"]))
    print("  all base    tok/s: " + " ".join(f"{x:.1f}" for x in speeds["base"]))

    step_ratio, decode_ratio = t_lo / t_fl, s_ad / s_base
    print(f"\n{'ratio':<34} {'measured':>9} {'target':>9}  verdict")
    print(f"{'training step, LoReFT / floor':<34} {step_ratio:>8.3f}x {'<= 1.10':>9}  "
          f"{'ok' if step_ratio <= TARGET_STEP else 'MISSED'}")
    print(f"{'decode tok/s, adapter / base':<34} {decode_ratio:>8.3f}x {'>= 0.97':>9}  "
          f"{'ok' if decode_ratio >= TARGET_DECODE else 'MISSED'}")
    lo, fl = mem["loreft"]["peak"], mem["floor"]["peak"]
    if lo is not None and fl:
        print(f"{'peak step memory, LoReFT / floor':<34} {lo / fl:>8.3f}x")
    print(f"{'saved activations, LoReFT / floor':<34} {mem['loreft']['saved'] / mem['floor']['saved']:>8.3f}x")
    return 0


def make_prompt(seed: int) -> str:
    from minireft.demo.datasets import rotten_tomatoes

    return rotten_tomatoes("test", n=1, seed=seed)[0]["prompt"]


if __name__ == "__main__":
    raise SystemExit(main())
