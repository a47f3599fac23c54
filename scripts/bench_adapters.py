"""Several adapters on one base model: one mixed batch against the same rows run adapter by adapter.

A batch of B prompts (left-padded, lengths drawn in [L/2, L]) where row b names adapter
names[b]: the adapters of `adapter_configs` (different layers, ranks, positions and
interventions) in turn, and the bare model (None) as one more "adapter". Two ways to run it:

    mixed     one call: reft(..., adapter_names=names) / reft.generate(..., adapter_names=names)
    grouped   the rows of each adapter as their own batch (left-padded to that group's longest
              prompt), the adapter made active with set_adapter, one call per group; the bare
              rows with adapter_names=[None, ...]

and two workloads:

    prefill   a forward of the prompts (logits of the last position only when the model can)
              tokens/s = real prompt tokens / seconds
    generate  greedy generate() of N new tokens per row (min_new_tokens = N)
              tokens/s = B·N / seconds

Rounds interleave mixed and grouped (the order alternates each round, one untimed warm-up
round), medians are reported, and the ratio mixed / grouped is printed per workload. The
mixed batch's greedy tokens are compared with the grouped ones (they must be equal: each row
gets what it gets alone).

    python scripts/bench_adapters.py                  # SmolLM2-135M, 4 adapters + bare, 16 rows
    python scripts/bench_adapters.py --quick          # a tiny random Llama, seconds
    python scripts/bench_adapters.py --device cuda --dtype bfloat16 --rows 64
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch

from minireft import ReftConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import tiny_model  # noqa: E402  (--quick's 4-block random Llama, pad id 0)

# The adapters on SmolLM2's 30 blocks; on a model of n blocks, block l becomes l·n // 30.
ADAPTERS = {
    "sentiment": {"layers": (14, 20), "rank": 4, "positions": "l3"},
    "direft": {"layers": (8, 16, 24), "rank": 8, "positions": "f3+l3", "intervention": "direft"},
    "paper": {"layers": tuple(range(30)), "rank": 8, "positions": "f7+l7", "tied": True},
    "noreft": {"layers": (4,), "rank": 2, "positions": "f1+l1", "intervention": "noreft"},
}
BARE = None  # a row that names no adapter runs the bare model


def adapter_configs(num_layers: int, count: int) -> dict[str, ReftConfig]:
    """The first `count` of ADAPTERS as ReftConfigs for a model of num_layers blocks."""
    if not 1 <= count <= len(ADAPTERS):
        raise ValueError(f"--adapters must be in 1..{len(ADAPTERS)}, got {count}")
    configs = {}
    for name, spec in list(ADAPTERS.items())[:count]:
        layers = sorted({layer * num_layers // 30 for layer in spec["layers"]})
        configs[name] = ReftConfig(**{**spec, "layers": layers})
    return configs


def row_names(adapters: list[str], rows: int) -> list[str | None]:
    """names[b]: the adapters and the bare model in turn, B entries."""
    cycle = [*adapters, BARE]
    return [cycle[b % len(cycle)] for b in range(rows)]


def prompts(vocab_size: int, rows: int, length: int, seed: int) -> list[torch.Tensor]:
    """B random prompts (token ids in [3, vocab)), lengths drawn in [length // 2, length]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, length // 2), length + 1, (rows,), generator=g)
    return [torch.randint(3, vocab_size, (int(n),), generator=g) for n in lengths]


def left_padded(rows: list[torch.Tensor], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), (B, L) each, padding on the left to the longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = r
        mask[b, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def build(model, configs: dict[str, ReftConfig], seed: int):
    """A ReftModel holding every adapter of `configs` under its own name, the first active."""
    from minireft.hf.model import ReftModel

    names = list(configs)
    reft = ReftModel(model, configs[names[0]], seed=seed, adapter_name=names[0])
    for i, name in enumerate(names[1:], start=1):
        reft.add_adapter(name, configs[name], seed=seed + i)
    return reft


# ---------------------------------------------------------------------------- workloads


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _groups(names: list) -> dict:
    """{adapter or None: [row indices]} in order of first appearance."""
    groups = {}
    for b, name in enumerate(names):
        groups.setdefault(name, []).append(b)
    return groups


def _run_group(reft, name, k: int, call):
    """call(adapter_names) for a group of k rows: adapter `name` made active and adapter_names
    None (today's single-adapter call), or adapter_names [None] * k for the bare rows."""
    if name is BARE:
        return call([None] * k)
    reft.set_adapter(name)
    return call(None)


def workloads(reft, rows, names, pad_id: int, new_tokens: int, device) -> dict:
    """{(workload, way): callable returning the greedy tokens (generate) or None (prefill)}."""
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(reft.model.forward).parameters else {}
    greedy = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
              "pad_token_id": pad_id}
    ids, mask = left_padded(rows, pad_id, device)
    groups = {name: (members, *left_padded([rows[b] for b in members], pad_id, device))
              for name, members in _groups(names).items()}

    def prefill_mixed():
        reft(input_ids=ids, attention_mask=mask, adapter_names=names, use_cache=False, **keep)

    def prefill_grouped():
        for name, (members, g_ids, g_mask) in groups.items():
            _run_group(reft, name, len(members), lambda which, i=g_ids, m=g_mask: reft(
                input_ids=i, attention_mask=m, adapter_names=which, use_cache=False, **keep))

    def generate_mixed():
        return reft.generate(ids, attention_mask=mask, adapter_names=names, **greedy)[:, -new_tokens:]

    def generate_grouped():
        out = torch.empty((len(rows), new_tokens), dtype=torch.long, device=device)
        for name, (members, g_ids, g_mask) in groups.items():
            tokens = _run_group(reft, name, len(members), lambda which, i=g_ids, m=g_mask: reft.generate(
                i, attention_mask=m, adapter_names=which, **greedy))
            out[members] = tokens[:, -new_tokens:]
        return out

    return {("prefill", "mixed"): prefill_mixed, ("prefill", "grouped"): prefill_grouped,
            ("generate", "mixed"): generate_mixed, ("generate", "grouped"): generate_grouped}


def time_rounds(runs: dict, rounds: int, device) -> tuple[dict, dict]:
    """({key: [seconds]}, {key: last result}): every run once per round, mixed and grouped in
    alternating order; one untimed warm-up round first."""
    times = {key: [] for key in runs}
    results = {}
    keys = list(runs)
    for r in range(rounds + 1):
        for key in (keys if r % 2 == 0 else keys[::-1]):
            _sync(device)
            t = time.perf_counter()
            with torch.no_grad():
                results[key] = runs[key]()
            _sync(device)
            if r > 0:
                times[key].append(time.perf_counter() - t)
    return times, results


def report(times: dict, results: dict, rows, names, new_tokens: int) -> list[str]:
    """The lines: tokens/s of each (workload, way) from medians, the ratios, the token check."""
    tokens = {"prefill": sum(len(r) for r in rows), "generate": len(rows) * new_tokens}
    speed = {key: tokens[key[0]] / statistics.median(t) for key, t in times.items()}
    groups = _groups(names)
    counts = ", ".join(f"{'bare' if n is BARE else n} {len(m)}" for n, m in groups.items())
    rounds = len(next(iter(times.values())))
    lines = [(f"{len(rows)} rows ({counts}); prompts of {min(map(len, rows))}..{max(map(len, rows))} "
              f"tokens, left-padded; {new_tokens} new tokens; medians of {rounds} interleaved rounds")]
    for workload in ("prefill", "generate"):
        mixed, grouped = speed[(workload, "mixed")], speed[(workload, "grouped")]
        lines.append(f"  {workload:8s} tokens/s: mixed batch {mixed:.1f}, grouped ({len(groups)} calls) "
                     f"{grouped:.1f}")
    ratios = ", ".join(f"{w} {speed[(w, 'mixed')] / speed[(w, 'grouped')]:.2f}x" for w in ("prefill", "generate"))
    lines.append(f"mixed / grouped tokens/s: {ratios}")
    same = torch.equal(results[("generate", "mixed")], results[("generate", "grouped")])
    lines.append(f"greedy tokens of the mixed batch equal the grouped runs': {'yes' if same else 'NO'}")
    return lines


# ---------------------------------------------------------------------------- main


def _blocks(layers) -> str:
    """"4,12,20", or "0-29" for a run of more than three."""
    if len(layers) > 3 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama, 2 rounds: checks that it runs")
    parser.add_argument("--model", default="smollm2", help="anything minireft.hf.loading.load_model takes")
    parser.add_argument("--adapters", type=int, default=4, help=f"how many of {list(ADAPTERS)} (1..4)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=64, help="the longest prompt; the shortest is half")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        model, pad_id = tiny_model(args.seed), 0
        args.rounds, args.length, args.new_tokens = min(args.rounds, 2), min(args.length, 12), min(args.new_tokens, 4)
    else:
        from minireft.hf.loading import load_model

        model, tokenizer = load_model(args.model)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = model.to(device=device, dtype=getattr(torch, args.dtype)).eval()
    configs = adapter_configs(model.config.num_hidden_layers, args.adapters)
    reft = build(model, configs, args.seed)
    rows = prompts(model.config.vocab_size, args.rows, args.length, args.seed)
    names = row_names(list(configs), args.rows)
    print(f"model {args.model if not args.quick else 'tiny random Llama'} ({model.config.num_hidden_layers} "
          f"blocks), {args.dtype} on {device}, threads {args.threads}; adapters: " + "; ".join(
              f"{n} {c.intervention} blocks {_blocks(c.layers)} rank {c.rank} {c.positions}{' tied' if c.tied else ''}"
              for n, c in configs.items()), flush=True)
    try:
        times, results = time_rounds(workloads(reft, rows, names, pad_id, args.new_tokens, device),
                                     args.rounds, device)
    finally:
        reft.detach()
    print("\n".join(report(times, results, rows, names, args.new_tokens)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
