"""What LoReFT costs on SmolLM2-135M, side by side in one process: the training step against
the floor and the bare model, peak step memory, decode speed, gradient checkpointing.

Configurations (batch B x T tokens, synthetic: a T − T/4-token prompt, a T/4-token completion):

    paper    all 30 blocks, rank 8, f7+l7 tied        B x T = 8 x 64
    3-block  blocks 4, 12, 20, rank 4, f1+l1 tied     8 x 64
    long     the paper's adapter                      8 x 512

For each, interleaved in rounds (the order rotates every round, ratios use medians, so drifts
and other processes hit every variant alike):

- step:  one training step (forward, loss, backward, optimizer step) exactly as
  minireft.hf.training runs it (minireft.hf.loss.loss_sum: logits only where labels are), for
  LoReFT; for the floor, the same ReftModel, batch, blocks, positions, loss path and
  optimizer with every Intervention swapped for BiasOnly (Φ(h) = h + b, b ∈ ℝ^d), the
  cheapest trainable edit there; and for the bare model: forward + backward of the frozen
  model alone on the same batch and loss, with requires_grad on the input embeddings so that
  backward runs through every block (the limit no edit can beat).
- peak step memory (LoReFT / floor): torch's allocations during one step above the level
  before it (CPU: the profiler's memory timeline; CUDA: max_memory_allocated).
- decode: greedy generate() tokens/s with the adapter against the base model (detached).
- the long configuration also: peak step memory with and without gradient checkpointing.

Targets (issue 8): paper <= 1.03x the floor, 3-block <= 1.01x, peak memory <= 1.02x.

    python scripts/bench_overhead.py                     # all three, CPU, float32 (~15 min)
    python scripts/bench_overhead.py --quick             # a tiny random model, seconds
    python scripts/bench_overhead.py --device cuda --dtype bfloat16 --sync-steps 8
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections import Counter

import torch
from torch import nn

from minireft import ReftConfig

TARGETS = {"paper": 1.03, "3-block": 1.01}
TARGET_MEMORY = 1.02
ALL_BLOCKS = None  # layers=ALL_BLOCKS: every block of the model

CONFIGS = {
    "paper": {"layers": ALL_BLOCKS, "rank": 8, "positions": "f7+l7", "length": 64},
    "3-block": {"layers": (4, 12, 20), "rank": 4, "positions": "f1+l1", "length": 64},
    "long": {"layers": ALL_BLOCKS, "rank": 8, "positions": "f7+l7", "length": 512},
}


class BiasOnly(nn.Module):
    """The floor: Φ(h) = h + b, b ∈ ℝ^d, cast to b's dtype and back as Intervention does."""

    def __init__(self, hidden_size: int, dtype=torch.float32, device=None):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(hidden_size, dtype=dtype, device=device))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h.to(self.b.dtype) + self.b).to(h.dtype)


# ---------------------------------------------------------------------------- setup


def reft_config(spec: dict, num_layers: int) -> ReftConfig:
    """The ReftConfig of a CONFIGS entry on a model of num_layers blocks (tied positions);
    block indices past the model's depth are dropped (tiny models)."""
    layers = range(num_layers) if spec["layers"] is ALL_BLOCKS else [x for x in spec["layers"] if x < num_layers]
    return ReftConfig(layers=tuple(layers) or (0,), rank=spec["rank"], positions=spec["positions"], tied=True)


def synthetic_batch(vocab_size: int, batch: int, length: int, seed: int = 0) -> dict:
    """A collated LM batch (CPU, as minireft.hf.data.collate makes it): B rows of `length`
    random tokens, the first length − length // 4 the prompt, the rest the completion."""
    from minireft.hf.data import IGNORE_INDEX

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, length), generator=g)
    prompt = length - length // 4
    labels = ids.clone()
    labels[:, :prompt] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "prompt_lengths": torch.full((batch,), prompt)}


def swap_in(reft, modules: dict) -> dict:
    """Put modules {(layer, group): module} into reft.interventions; return the ones taken out."""
    out = {}
    for (layer, group), module in modules.items():
        out[(layer, group)] = reft.interventions[layer][group]
        reft.interventions[layer][group] = module
    return out


def floor_modules(reft) -> dict:
    return {(layer, group): BiasOnly(reft.hidden_size, dtype=m.R.dtype, device=m.R.device)
            for layer, groups in reft.interventions.items() for group, m in groups.items()}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- steps


def reft_step(reft, optimizer, batch):
    """One training step as minireft.hf.training runs it (loss at label positions only)."""
    from minireft.hf.loss import loss_sum, targets_of

    n = sum(targets_of({"labels": row.tolist()}, "lm") for row in batch["labels"])

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_sum(reft, batch, "lm")
        (loss / n).backward()
        optimizer.step()

    return step


def bare_step(reft, batch):
    """Forward + backward of the frozen model alone (no edit) on the same batch and loss; the
    input embeddings require grad so that backward runs through every block."""
    from minireft.hf.loss import lm_loss_sum, logit_columns, on_device

    base = reft.model
    device = next(base.parameters()).device
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    columns, kept = logit_columns(batch["labels"])
    columns = on_device(columns, device)

    def step():
        embeds = base.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                      logits_to_keep=columns, use_cache=False).logits
        loss, n = lm_loss_sum(logits, kept)
        (loss / n).backward()

    return step


def time_rounds(steps: dict, rounds: int, device) -> dict:
    """{name: [seconds]}: each step once per round, the order rotated every round; one
    untimed warm-up round first."""
    names = list(steps)
    times = {name: [] for name in names}
    for r in range(rounds + 1):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            _sync(device)
            t = time.perf_counter()
            steps[name]()
            _sync(device)
            if r > 0:
                times[name].append(time.perf_counter() - t)
    return times


def peak_step_bytes(step, device) -> int | None:
    """Peak of torch's allocations during step() above the level before it: CUDA's
    max_memory_allocated, or on the CPU the profiler's memory timeline (None if this
    torch cannot give it)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
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


@contextlib.contextmanager
def training_modes(reft, gradient_checkpointing: bool = False):
    """The modes train() runs in (interventions train, base eval; optional checkpointing)."""
    from minireft.hf.modes import enter_train_mode, restore_modes

    before = enter_train_mode(reft, gradient_checkpointing)
    try:
        yield
    finally:
        restore_modes(before)


def bench_training(reft, batch, rounds: int, *, lr: float = 1e-3, checkpointing_memory: bool = False) -> dict:
    """Interleaved step times of LoReFT, the floor and the bare model; peak step memory of
    LoReFT and the floor (and of LoReFT with gradient checkpointing when asked)."""
    from minireft.torch.optim import ReftOptimizer

    device = next(reft.model.parameters()).device
    loreft = {(layer, group): m for layer, groups in reft.interventions.items() for group, m in groups.items()}
    floor = floor_modules(reft)
    optimizers = {"loreft": ReftOptimizer.for_named_parameters(reft.named_trainable_parameters(), lr=lr)}
    swap_in(reft, floor)
    optimizers["floor"] = ReftOptimizer.for_named_parameters(reft.named_trainable_parameters(), lr=lr)
    swap_in(reft, loreft)
    modules = {"loreft": loreft, "floor": floor}

    def variant(name):
        inner = reft_step(reft, optimizers[name], batch)

        def step():
            swap_in(reft, modules[name])
            inner()
        return step

    steps = {"loreft": variant("loreft"), "floor": variant("floor"), "bare": bare_step(reft, batch)}
    with training_modes(reft):
        times = time_rounds(steps, rounds, device)
        memory = {name: peak_step_bytes(steps[name], device) for name in ("loreft", "floor")}
    if checkpointing_memory:
        with training_modes(reft, gradient_checkpointing=True):
            memory["loreft, checkpointing"] = peak_step_bytes(steps["loreft"], device)
    swap_in(reft, loreft)
    return {"times": times, "memory": memory}


def count_syncs(reft, tokenizer, steps: int, batch_size: int = 8) -> dict | None:
    """Run train() for `steps` steps under torch.cuda.set_sync_debug_mode("warn") and count
    the synchronising CUDA calls by source line (None off CUDA)."""
    from minireft.hf.training import train

    device = next(reft.model.parameters()).device
    if device.type != "cuda":
        return None
    examples = [{"prompt": f"Question {i}: what is {i} plus {i}?", "completion": f" {2 * i}"}
                for i in range(batch_size * steps)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(reft, tokenizer, examples, batch_size=batch_size, max_steps=steps, epochs=1,
                  progress=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    where = Counter(f"{w.filename.rsplit('/', 1)[-1]}:{w.lineno}" for w in caught
                    if "synchroniz" in str(w.message))
    return {"steps": steps, "total": sum(where.values()), "where": dict(where.most_common())}


def bench_decode(model, config, prompt_ids, new_tokens: int, rounds: int, seed: int, pad_id: int) -> dict:
    """{"adapter": [tok/s], "base": [tok/s]}: greedy generate(), interleaved, one warm-up."""
    from minireft.hf.model import attach

    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)  # (1, n)
    kwargs = {"attention_mask": torch.ones_like(ids), "max_new_tokens": new_tokens,
              "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": pad_id}

    def run(generate):
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            out = generate(ids, **kwargs)
        _sync(device)
        assert out.shape[1] == ids.shape[1] + new_tokens
        return new_tokens / (time.perf_counter() - t)

    speeds = {"adapter": [], "base": []}
    for i in range(rounds + 1):
        for name in (("adapter", "base") if i % 2 == 0 else ("base", "adapter")):
            if name == "adapter":
                reft = attach(model, config, seed=seed)
                speed = run(reft.generate)
                reft.detach()
            else:
                speed = run(model.generate)
            if i > 0:
                speeds[name].append(speed)
    return speeds


# ---------------------------------------------------------------------------- report


def _mib(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f} MiB"


def _ratio(a, b) -> str:
    return "n/a" if a is None or not b else f"{a / b:.3f}x"


def report(name: str, spec: dict, config: ReftConfig, batch: dict, train: dict, speeds: dict | None) -> list[str]:
    """The lines of one configuration; the ratios as the module docstring defines them."""
    med = {k: 1000 * statistics.median(v) for k, v in train["times"].items()}
    mem = train["memory"]
    B, T = batch["input_ids"].shape
    target = TARGETS.get(name)
    ratio = med["loreft"] / med["floor"]
    verdict = "" if target is None else f" (target <= {target:.2f}x: {'ok' if ratio <= target else 'MISSED'})"
    layers = "all" if len(config.layers) > 3 else ",".join(map(str, config.layers))
    lines = [
        (f"[{name}] blocks {layers} ({len(config.layers)}), rank {config.rank}, {config.positions} tied; "
        f"batch {B} x {T}"),
        (f"  step ms (median of {len(train['times']['loreft'])}): LoReFT {med['loreft']:.1f}, floor "
        f"{med['floor']:.1f}, bare fwd+bwd {med['bare']:.1f}"),
        f"  step LoReFT / floor      {ratio:.3f}x{verdict}",
        f"  step LoReFT / bare       {med['loreft'] / med['bare']:.3f}x   floor / bare {med['floor'] / med['bare']:.3f}x",
        (f"  peak step memory LoReFT {_mib(mem['loreft'])}, floor {_mib(mem['floor'])}: "
        f"{_ratio(mem['loreft'], mem['floor'])} (target <= {TARGET_MEMORY:.2f}x)"),
    ]
    if "loreft, checkpointing" in mem:
        lines.append(f"  gradient checkpointing: peak step memory {_mib(mem['loreft'])} without, "
                     f"{_mib(mem['loreft, checkpointing'])} with "
                     f"({_ratio(mem['loreft, checkpointing'], mem['loreft'])})")
    if speeds:
        s_ad, s_base = (statistics.median(speeds[k]) for k in ("adapter", "base"))
        lines.append(f"  decode tok/s (median of {len(speeds['adapter'])}): adapter {s_ad:.1f}, base "
                     f"{s_base:.1f}: {s_ad / s_base:.3f}x")
    return lines


# ---------------------------------------------------------------------------- main


def tiny_model(seed: int = 0):
    """(model, tokenizer-like pad id) for --quick: a 4-block random Llama, vocab 128."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def run(model, *, configs, batch_size: int, rounds: int, long_rounds: int, decode_rounds: int,
        new_tokens: int, seed: int, pad_id: int, tokenizer=None, sync_steps: int = 0,
        length_scale: float = 1.0) -> list[str]:
    """Benchmark every configuration in `configs` on `model`; return the report lines."""
    from minireft.hf.model import attach

    num_layers = model.config.num_hidden_layers
    lines = []
    for name in configs:
        spec = CONFIGS[name]
        config = reft_config(spec, num_layers)
        length = max(8, int(spec["length"] * length_scale))
        batch = synthetic_batch(model.config.vocab_size, batch_size, length, seed)
        reft = attach(model, config, seed=seed)
        try:
            train = bench_training(reft, batch, long_rounds if name == "long" else rounds,
                                   checkpointing_memory=name == "long")
            syncs = count_syncs(reft, tokenizer, sync_steps) if sync_steps and tokenizer is not None else None
        finally:
            reft.detach()
        speeds = None
        if decode_rounds and name != "long":
            prompt = batch["input_ids"][0, :int(batch["prompt_lengths"][0])].tolist()
            speeds = bench_decode(model, config, prompt, new_tokens, decode_rounds, seed, pad_id)
        block = report(name, spec, config, batch, train, speeds)
        if syncs is not None:
            block.append(f"  host syncs in train() under set_sync_debug_mode: {syncs['total']} in "
                         f"{syncs['steps']} steps ({syncs['total'] / syncs['steps']:.1f} per step): "
                         f"{syncs['where']}")
        print("\n".join(block), flush=True)
        lines += block
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="paper,3-block,long", help="comma list of " + ", ".join(CONFIGS))
    parser.add_argument("--quick", action="store_true",
                        help="a tiny random model, short sequences, 2 rounds: checks that it runs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=8, help="timed rounds for the 8 x 64 configurations")
    parser.add_argument("--long-pairs", type=int, default=3, help="timed rounds for the 8 x 512 one")
    parser.add_argument("--decode-pairs", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--sync-steps", type=int, default=0,
                        help="CUDA: also run train() for this many steps counting host syncs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    tokenizer = None
    if args.quick:
        model, pad_id, scale = tiny_model(args.seed).to(device, dtype), 0, 0.125
        rounds, long_rounds, decode_rounds, new_tokens = 2, 1, 1, 4
        what = "tiny random Llama (--quick)"
    else:
        from minireft.hf.loading import load_model

        model, tokenizer = load_model("smollm2", dtype=dtype)
        model, pad_id, scale = model.to(device), tokenizer.pad_token_id, 1.0
        rounds, long_rounds, decode_rounds, new_tokens = args.pairs, args.long_pairs, args.decode_pairs, args.new_tokens
        what = "SmolLM2-135M"
    print(f"{what}, {args.dtype} on {device}" + (f", {args.threads} threads" if device.type == "cpu" else "")
          + f"; configurations {', '.join(configs)}; step rounds {rounds} ({long_rounds} long), order "
          f"rotated each round")
    run(model, configs=configs, batch_size=args.batch_size, rounds=rounds, long_rounds=long_rounds,
                decode_rounds=decode_rounds, new_tokens=new_tokens, seed=args.seed, pad_id=pad_id,
                tokenizer=tokenizer, sync_steps=args.sync_steps, length_scale=scale)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
