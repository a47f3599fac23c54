"""Measure candidate training defaults on SmolLM2-135M-Instruct across several small tasks.

Each candidate is a full set of train() / ReftConfig arguments, passed explicitly (so the
measurement does not depend on what the library's defaults are today). For each task it
trains a fresh LoReFT from the same seed and scores held-out rows:

    format   the made-up format of minireft.demo.datasets.format_task: 32 training words;
             held-out scores, out of 8 held-out words (and all 32, in brackets): "shape",
             the greedy generation is <<LETTERS|digits>> and nothing else (FORMAT_RE);
             "exact", it is the right string (the word's letters upper-cased, its length)
    rt       Rotten Tomatoes sentiment as a word answer: accuracy by scoring the two
             choices "negative" / "positive" (summed log-probability)
    boolq    BoolQ yes/no, the same way, on rows whose prompt is at most 400 characters
             (bench_tasks.short_boolq: a median prompt of 105 tokens with the chat template,
             against 168 for the whole split)
    constraints  bench_tasks' program-checked instructions: exact match of the greedy answer

rt, boolq and constraints train on N_WORD_TRAIN rows of the training split and score
N_WORD_VAL validation rows carved from the training split too (other reviews, passages,
words), so a default chosen here never saw scripts/bench_tasks.py's held-out rows.

Usage:
    python scripts/tune_defaults.py                       # every candidate, every task
    python scripts/tune_defaults.py --only steps64 --tasks format
    python scripts/tune_defaults.py --list

Writes one JSON line per (candidate, task) to results/tune_defaults/runs.jsonl (appending)
and prints a markdown table at the end. Wall times are on the machine at hand (a busy
2-core CPU when this was run for the README).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # bench_tasks: the constraints task

FORMAT_RE = re.compile(r"<<[A-Z]+\|\d+>>")

# name -> train()/ReftConfig arguments; "steps" is the number of optimizer steps
# (epochs are computed from it), "layers" may be fractions of the depth (floats in [0, 1)).
BASE = {"steps": 64, "batch_size": 4, "lr": 1e-2, "layers": [4, 8], "positions": "f7+l7",
        "rank": 4, "chat_template": True, "warmup_ratio": 0.0, "intervention": "loreft"}
CANDIDATES = {
    "before": dict(BASE, steps=4, batch_size=8, lr=4e-3, layers=[8], warmup_ratio=0.1),  # 1 epoch of 32
    "issue_fix": dict(BASE),  # --epochs 8 --batch-size 4 --lr 1e-2 --layers 4,8: 64 steps
    "bs8_lr4e-3": dict(BASE, batch_size=8, lr=4e-3),
    "steps32": dict(BASE, steps=32),
    "steps32_lr2e-2": dict(BASE, steps=32, lr=2e-2),
    "l3": dict(BASE, positions="l3"),
    "no_chat": dict(BASE, chat_template=False),
    "thirds": dict(BASE, layers=[1 / 3, 2 / 3]),  # blocks 10, 20 of 30
    "rank8": dict(BASE, rank=8),
    "direft": dict(BASE, intervention="direft"),
    "no_chat_bs8_lr4e-3": dict(BASE, chat_template=False, batch_size=8, lr=4e-3),
    "no_chat_steps128": dict(BASE, chat_template=False, steps=128),
    "no_chat_lr2e-2": dict(BASE, chat_template=False, lr=2e-2),
    # train()'s defaults as they are (64 x 8, lr 4e-3, warmup 0.1), and a run a quarter the size
    "defaults_64x8": dict(BASE, batch_size=8, lr=4e-3, warmup_ratio=0.1),
    "min32_bs4": dict(BASE, steps=32, warmup_ratio=0.1),
    "min32_bs4_lr2e-2": dict(BASE, steps=32, lr=2e-2, warmup_ratio=0.1),
    # the defaults' run at the higher rates that matched LoRA on Rotten Tomatoes
    "defaults_lr1e-2": dict(BASE, batch_size=8, lr=1e-2, warmup_ratio=0.1),
    "defaults_lr2e-2": dict(BASE, batch_size=8, lr=2e-2, warmup_ratio=0.1),
}
TASKS = ("format", "rt", "boolq", "constraints")
N_WORD_TRAIN = 128
N_WORD_VAL = 200


def resolve_layers(layers, depth: int) -> list[int]:
    """Ints stay; a float f in [0, 1) becomes round(f · depth) (clamped to a valid block)."""
    out = [x if isinstance(x, int) else min(depth - 1, round(x * depth)) for x in layers]
    return sorted(set(out))


def task_data(task: str):
    from minireft.demo import datasets

    if task == "format":
        return datasets.format_task("train", 32, seed=0), datasets.format_task("test", None, seed=0)
    import bench_tasks

    if task == "constraints":  # words of neither the benchmark's test split nor each other's
        return bench_tasks.constraints_task("tune", N_WORD_TRAIN), bench_tasks.constraints_task("val", N_WORD_VAL)
    if task == "rt":
        rows, choices = datasets.rotten_tomatoes("train", None, seed=0), ["negative", "positive"]
    else:
        rows, choices = bench_tasks.short_boolq("train"), ["no", "yes"]
    # the first N_WORD_TRAIN rows train; the next N_WORD_VAL, never trained on, validate
    train, val = rows[:N_WORD_TRAIN], rows[N_WORD_TRAIN:N_WORD_TRAIN + N_WORD_VAL]
    return train, [dict(r, choices=choices) for r in val]


def score(task: str, reft, tokenizer, test, chat: bool) -> dict:
    from minireft.hf import evaluation

    if task == "format":
        gens = evaluation.generate_greedy(reft, tokenizer, [r["prompt"] for r in test], chat_template=chat,
                                          max_new_tokens=12, batch_size=8)
        exact = [evaluation.normalise(g) == r["completion"] for g, r in zip(gens, test)]
        shaped = [FORMAT_RE.fullmatch(evaluation.normalise(g)) is not None for g in gens]
        return {"exact8": sum(exact[:8]), "exact32": sum(exact), "format8": sum(shaped[:8]),
                "format32": sum(shaped), "generations": gens}
    if task == "constraints":  # scored as the benchmark scores it
        import bench_tasks

        held_out = bench_tasks.Task("constraints", "program", [], test)
        return {"accuracy": bench_tasks.score_lm(reft, tokenizer, held_out, chat_template=chat)}
    return {"accuracy": evaluation.score_choices(reft, tokenizer, test, chat_template=chat,
                                                 batch_size=8)["accuracy"]}


def run(name: str, cand: dict, task: str, model, tokenizer) -> dict:
    from minireft import ReftConfig
    from minireft.hf.model import attach
    from minireft.hf.training import train

    train_rows, test = task_data(task)
    depth = model.config.num_hidden_layers
    config = ReftConfig(layers=resolve_layers(cand["layers"], depth), rank=cand["rank"],
                        positions=cand["positions"], intervention=cand["intervention"])
    per_step = cand["batch_size"]
    epochs = max(1, math.ceil(cand["steps"] * per_step / len(train_rows)))
    reft = attach(model, config, seed=0)
    try:
        t0 = time.perf_counter()
        result = train(reft, tokenizer, train_rows, epochs=epochs, max_steps=cand["steps"],
                       batch_size=cand["batch_size"], lr=cand["lr"], warmup_ratio=cand["warmup_ratio"],
                       chat_template=cand["chat_template"], seed=0, progress=False)
        seconds = time.perf_counter() - t0
        scores = score(task, reft, tokenizer, test, cand["chat_template"])
    finally:
        reft.detach()
    return {"candidate": name, "task": task, **cand, "layers_resolved": list(config.layers),
            "steps_run": result.steps, "loss_first": result.losses[0], "loss_last": result.losses[-1],
            "train_seconds": round(seconds, 1), **scores}


def zero_shot(task: str, model, tokenizer, chat: bool) -> dict:
    _, test = task_data(task)
    return {"candidate": "zero-shot", "task": task, "chat_template": chat,
            **score(task, model, tokenizer, test, chat)}


def table(rows: list[dict]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["candidate"], {})[r["task"]] = r
    lines = [("| candidate | format shape /8 (/32) | format exact /8 (/32) | rt acc | boolq acc "
             "| constraints acc | train s (format / rt / boolq / constraints) |"),
             "|---|---|---|---|---|---|---|"]
    for name, tasks in by.items():
        f = tasks.get("format", {})
        cells = [f"{f['format8']}/8 ({f['format32']}/32)" if "format8" in f else "",
                 f"{f['exact8']}/8 ({f['exact32']}/32)" if "exact8" in f else "",
                 f"{tasks['rt']['accuracy']:.3f}" if "rt" in tasks else "",
                 f"{tasks['boolq']['accuracy']:.3f}" if "boolq" in tasks else "",
                 f"{tasks['constraints']['accuracy']:.3f}" if "constraints" in tasks else "",
                 " / ".join(str(tasks[t].get("train_seconds", "")) if t in tasks else "" for t in TASKS)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", help="candidate names (default: all)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--zero-shot", action="store_true", help="also score the bare model")
    p.add_argument("--out", default=str(ROOT / "results" / "tune_defaults"))
    p.add_argument("--list", action="store_true", help="print the candidates and exit")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared CPU more threads are much slower)")
    args = p.parse_args(argv)
    if args.list:
        for name, cand in CANDIDATES.items():
            print(name, json.dumps(cand))
        return 0
    import torch

    from minireft.hf.loading import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    names = args.only or list(CANDIDATES)
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        p.error(f"unknown candidate(s) {unknown}; --list shows them")
    jobs = [("zero-shot", t) for t in args.tasks if args.zero_shot] + [(n, t) for t in args.tasks for n in names]
    for name, task in jobs:
        if name == "zero-shot":
            row = zero_shot(task, model, tokenizer, chat=True)
        else:
            row = run(name, CANDIDATES[name], task, model, tokenizer)
        rows.append(row)
        with open(out / "runs.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in BASE}), flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
