"""What CHUNK_OVERHEAD_TOKENS should be: train()'s CPU step at several overheads, side by side.

On a CPU, train() runs each micro-batch as sub-batches of similar length
(minireft.hf.batching.length_chunks), chosen to minimise

    Σ_chunks (overhead + |chunk| · longest row in the chunk)

the padded positions computed plus a fixed cost per extra forward and backward. overhead 0
splits freely, a huge overhead keeps the whole batch. This times training.train_step (the
forward, loss and backward of one optimizer step, no optimizer update) on the same
micro-batches of real rows for each overhead, interleaved in rounds with the order rotating
(the machine is shared and noisy), and prints the median seconds per step and the ratio to
the whole batch.

    python scripts/bench_chunks.py                  # SmolLM2, PIQA and constraints rows (~6 min)
    python scripts/bench_chunks.py --quick          # a tiny random model: checks that it runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

OVERHEADS = (0, 16, 64, 256, None)  # None: one chunk, the whole micro-batch


def time_steps(model, encoded, steps: list, overhead, pad: int) -> float:
    """Seconds for `steps` (each a list of micro-batches of row indices) at this overhead."""
    import torch

    from minireft.hf import batching
    from minireft.hf.training import train_step

    saved = batching.CHUNK_OVERHEAD_TOKENS
    batching.CHUNK_OVERHEAD_TOKENS = 10**9 if overhead is None else overhead
    try:
        start = time.perf_counter()
        for groups in steps:
            train_step(model, encoded, groups, "lm", pad, torch.device("cpu"), "right")
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - start
    finally:
        batching.CHUNK_OVERHEAD_TOKENS = saved


def measure(model, encoded, *, n_steps: int, rounds: int, batch_size: int, pad: int, log=print) -> dict:
    """{overhead: median seconds per step} over `rounds` interleaved rounds."""
    import torch

    from minireft.hf.batching import step_groups

    generator = torch.Generator().manual_seed(0)
    steps = list(step_groups(len(encoded), batch_size, 1, generator))[:n_steps]
    time_steps(model, encoded, steps[:1], None, pad)  # warm-up: first-call allocations
    times: dict = {o: [] for o in OVERHEADS}
    for r in range(rounds):
        order = OVERHEADS[r % len(OVERHEADS):] + OVERHEADS[:r % len(OVERHEADS)]
        for overhead in order:
            times[overhead].append(time_steps(model, encoded, steps, overhead, pad) / len(steps))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{o}: {times[o][-1]:.2f} s" for o in OVERHEADS))
    return {o: statistics.median(t) for o, t in times.items()}


def table(name: str, medians: dict) -> str:
    whole = medians[None]
    lines = [f"{name}", "| overhead | s / step (median) | vs the whole batch |", "|---|---|---|"]
    for o, s in medians.items():
        lines.append(f"| {'whole batch' if o is None else o} | {s:.3f} | {s / whole:.3f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny random model: checks that it runs")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps timed per overhead per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    from minireft import ReftConfig
    from minireft.hf.data import encode_examples, pad_id
    from minireft.hf.model import attach
    from minireft.hf.modes import enter_train_mode
    from minireft.hf.recipe import TRAIN, default_layers

    torch.set_num_threads(args.threads)
    if args.quick:
        from bench_overhead import tiny_model

        model, tokenizer, pad = tiny_model(0), None, 0
        gen = torch.Generator().manual_seed(0)
        encoded = []
        for i in range(16):  # prompts of 3..40 tokens, 2-token completions
            n = int(torch.randint(3, 41, (1,), generator=gen))
            ids = torch.randint(3, 90, (n + 2,), generator=gen).tolist()
            encoded.append({"input_ids": ids, "labels": [-100] * n + ids[n:], "prompt_length": n})
        sets = {"tiny random Llama (--quick)": encoded}
        args.steps, args.rounds = 2, 1
    else:
        import bench_tasks

        from minireft.hf.loading import load_model

        model, tokenizer = load_model("smollm2")
        pad = pad_id(tokenizer)
        sets = {name: encode_examples(tokenizer, bench_tasks.load_task(name, 256, 1).train, task="lm",
                                      chat_template=True) for name in ("piqa", "constraints")}
    depth = model.config.num_hidden_layers
    reft = attach(model, ReftConfig(layers=default_layers(depth)), seed=0)
    enter_train_mode(reft)  # as train() runs: the edit trains, the base model stays in eval
    try:
        for name, encoded in sets.items():
            medians = measure(reft, encoded, n_steps=args.steps, rounds=args.rounds,
                              batch_size=TRAIN.batch_size, pad=pad)
            print(table(f"{name}: batch {TRAIN.batch_size}, {args.steps} steps x {args.rounds} rounds, "
                        f"{args.threads} threads", medians), flush=True)
    finally:
        reft.detach()
    return 0


if __name__ == "__main__":
    sys.exit(main())
