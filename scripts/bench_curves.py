"""Learning curves: LoReFT against LoRA at equal optimizer steps and at equal CPU time.

`python scripts/bench_tasks.py --curve` runs this. For each task of the default set and
each learning rate of a method's grid, one run of CURVE_STEPS[-1] optimizer steps (the
schedule of that run: 10% warmup, then linear decay to zero at the last step) is scored on
validation rows (never the benchmark's held-out test rows; bench_tasks.load_task's
split="val") at each step of CURVE_STEPS. At each point it records:

    accuracy        on the validation rows, and the per-row hits (for paired intervals)
    train_cpu_s     cumulative CPU seconds of training (time.process_time, scoring excluded)
    train_wall_s    the same on the wall clock

CPU seconds, with torch on one thread (--threads 1, the default here), count the work a run
does whatever else shares the machine; wall seconds on a shared machine do not. Both
methods get their grid (LR_GRID), and the best rate of each, by accuracy at the last step,
is the one compared. At equal steps: the two best runs at each checkpoint. At equal CPU
time: for each of LoRA's checkpoints (its cumulative seconds B), LoRA there against the
best LoReFT run's latest checkpoint with train_cpu_s <= B (what a CPU user gets for B
seconds). Each comparison is a paired difference on the same rows with a 95% bootstrap
interval and McNemar's p (scripts/paired.py).

Writes <out>/curves/runs.jsonl (one line per run, appended as each finishes, so tasks can
run as separate processes and merge), summary.md and one <task>.png per task with two
panels: accuracy against optimizer steps, and against CPU seconds.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import paired

# Checkpoints 1.5x apart: a LoRA step costs 1.6-1.8x a LoReFT step here, so at a LoRA
# checkpoint's CPU seconds LoReFT has a later checkpoint of its own (with steps 2x apart,
# equal time fell back to equal steps).
CURVE_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256)
LR_GRID = {"loreft": (2e-3, 4e-3, 1e-2), "lora": (2e-4, 5e-4, 1e-3)}
N_VAL = 200
QUICK = {"steps": (1, 2), "train": 8, "val": 4}


class Checkpoints:
    """Scores the model at the steps of `steps` and keeps the clock of training alone.

    Call it after optimizer step `step`; the time it spends scoring is excluded from the
    cumulative train seconds it records."""

    def __init__(self, steps, score):
        self.steps, self.score, self.points = tuple(steps), score, []
        self.cpu0, self.wall0, self.cpu_out, self.wall_out = time.process_time(), time.perf_counter(), 0.0, 0.0

    def __call__(self, step: int, *model) -> dict:
        if step not in self.steps or any(p["step"] == step for p in self.points):
            return {}
        cpu, wall = time.process_time(), time.perf_counter()
        hits = [bool(h) for h in self.score(*model)]
        self.points.append({"step": step, "accuracy": sum(hits) / len(hits), "hits": hits,
                            "train_cpu_s": round(cpu - self.cpu0 - self.cpu_out, 2),
                            "train_wall_s": round(wall - self.wall0 - self.wall_out, 2)})
        self.cpu_out += time.process_time() - cpu
        self.wall_out += time.perf_counter() - wall
        return {"curve_accuracy": self.points[-1]["accuracy"]}


class StepCounter:
    """Counts optimizer steps through torch's global post-step hook: train() calls its
    eval_fn(model) without the step, so the count says which step the model holds."""

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.steps = 0
        self.handle = register_optimizer_step_post_hook(self._count)
        return self

    def _count(self, optimizer, args, kwargs) -> None:
        self.steps += 1

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def reft_curve(bench, model, tokenizer, task, *, lr: float, steps, chat_template: bool, seed: int = 0,
               intervention: str = "loreft") -> dict:
    """One LoReFT run through train() (its defaults but lr and the run's length) with checkpoints."""
    from minireft.hf.training import train

    reft, trained = bench.attach_reft(model, task, intervention, seed=seed)
    try:
        score = lambda m: bench.reft_hits(reft, trained, tokenizer, task, chat_template=chat_template)  # noqa: E731
        every = math.gcd(*steps)
        with StepCounter() as counter:
            clock = Checkpoints(steps, score)
            train(trained, tokenizer, task.train, seed=seed, progress=False, lr=lr, min_steps=max(steps),
                  max_steps=max(steps), eval_fn=lambda m: clock(counter.steps, m), eval_every=every,
                  **({} if task.kind == "classify" else {"chat_template": chat_template}))
        params = trained.num_trainable_parameters()
    finally:
        reft.detach()
    return {"params": params, "points": clock.points}


def lora_curve(bench, model, tokenizer, task, *, lr: float, steps, chat_template: bool, seed: int = 0) -> dict:
    """One LoRA run (bench_tasks.run_lora) with checkpoints."""
    def score(lora, head):
        lora.eval()
        try:
            if task.kind == "classify":
                return bench.classify_rows(bench.lora_predict(lora, head), tokenizer, task)
            return bench.score_rows(lora, tokenizer, task, chat_template=chat_template)
        finally:
            lora.train()

    clock = Checkpoints(steps, score)
    row = bench.run_lora(model, tokenizer, task, chat_template=chat_template, seed=seed, lr=lr,
                         steps=max(steps), on_step=clock)
    return {"params": row["params"], "points": clock.points}


def run(bench, tasks, *, lm, encoder, out: Path, methods=("loreft", "lora"), lrs=None, steps=CURVE_STEPS,
        n_train: int = 256, n_val: int = N_VAL, chat_template: bool = True, log=print) -> list[dict]:
    """Every (task, method, lr) run, each appended to out/runs.jsonl as it finishes."""
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for name in tasks:
        task = bench.load_task(name, n_train, n_val, split="val")
        model, tokenizer = encoder if task.kind == "classify" else lm
        for method in methods:
            for lr in (lrs or {}).get(method, LR_GRID[method]):
                fn = reft_curve if method == "loreft" else lora_curve
                result = fn(bench, model, tokenizer, task, lr=lr, steps=steps, chat_template=chat_template)
                record = {"task": name, "method": method, "lr": lr, "n_train": len(task.train),
                          "n_val": len(task.test), "majority": bench.majority_accuracy(task),
                          "steps": list(steps), **result}
                runs.append(record)
                with open(out / "runs.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                log(json.dumps({k: v for k, v in record.items() if k != "points"} |
                               {"accuracy": [p["accuracy"] for p in result["points"]],
                                "train_cpu_s": [p["train_cpu_s"] for p in result["points"]]}))
    return runs


# ---------------------------------------------------------------------------- the report


def read_runs(path: Path) -> list[dict]:
    """runs.jsonl, the last run of each (task, method, lr, length) kept: a rerun replaces it,
    and so does a run of the same length scored at other checkpoints (the same training: the
    schedule depends on the length only)."""
    latest = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["task"], r["method"], r["lr"], r["steps"][-1])] = r
    return list(latest.values())


def best(runs: list[dict], task: str, method: str) -> dict | None:
    """The method's run on `task` with the highest accuracy at its last checkpoint."""
    mine = [r for r in runs if r["task"] == task and r["method"] == method]
    return max(mine, key=lambda r: (r["points"][-1]["accuracy"], -r["lr"]), default=None)


def at_equal_steps(reft: dict, lora: dict) -> list[dict]:
    """LoReFT − LoRA at each step both runs scored."""
    lora_at = {p["step"]: p for p in lora["points"]}
    return [{"step": p["step"], "reft": p["accuracy"], "lora": lora_at[p["step"]]["accuracy"],
             **paired.paired_bootstrap(p["hits"], lora_at[p["step"]]["hits"]),
             "mcnemar_p": paired.mcnemar_p(p["hits"], lora_at[p["step"]]["hits"])}
            for p in reft["points"] if p["step"] in lora_at]


def at_equal_time(reft: dict, lora: dict) -> list[dict]:
    """For each LoRA checkpoint (B CPU seconds): LoReFT's latest checkpoint within B against it."""
    rows = []
    for q in lora["points"]:
        within = [p for p in reft["points"] if p["train_cpu_s"] <= q["train_cpu_s"]]
        if within:
            p = within[-1]
            rows.append({"budget_s": q["train_cpu_s"], "lora_step": q["step"], "reft_step": p["step"],
                         "reft": p["accuracy"], "lora": q["accuracy"], **paired.paired_bootstrap(p["hits"], q["hits"]),
                         "mcnemar_p": paired.mcnemar_p(p["hits"], q["hits"])})
    return rows


def summary(runs: list[dict]) -> str:
    """Markdown: every run's curve, then the best rates compared at equal steps and equal time."""
    lines = []
    for steps in dict.fromkeys(tuple(r["steps"]) for r in runs):
        lines += ["| task | method | lr | params | " + " | ".join(f"step {s}" for s in steps)
                  + " | CPU s at the last step |", "|---" * (5 + len(steps)) + "|"]
        for r in (r for r in runs if tuple(r["steps"]) == steps):
            cells = " | ".join(f"{p['accuracy']:.3f}" for p in r["points"])
            lines.append(f"| {r['task']} | {r['method']} | {r['lr']:g} | {r['params']:,} | {cells} | "
                         f"{r['points'][-1]['train_cpu_s']:.0f} |")
        lines.append("")
    for task in dict.fromkeys(r["task"] for r in runs):
        reft, lora = best(runs, task, "loreft"), best(runs, task, "lora")
        if not (reft and lora):
            continue
        majority = reft.get("majority")
        lines += ["", f"**{task}** (validation rows: {reft['n_val']}"
                  + (f"; majority label {majority:.3f}" if majority is not None else "")
                  + f"): best LoReFT lr {reft['lr']:g} ({reft['params']:,} params), best LoRA lr "
                  f"{lora['lr']:g} ({lora['params']:,} params, {lora['params'] / reft['params']:.0f}x)", "",
                  "| equal steps | LoReFT | LoRA | LoReFT − LoRA [95% CI] | McNemar p |", "|---|---|---|---|---|"]
        lines += [f"| {c['step']} | {c['reft']:.3f} | {c['lora']:.3f} | {c['diff']:+.3f} [{c['lo']:+.3f}, "
                  f"{c['hi']:+.3f}] | {c['mcnemar_p']:.2g} |" for c in at_equal_steps(reft, lora)]
        lines += ["", "| equal CPU s (LoRA's step) | LoReFT step | LoReFT | LoRA | LoReFT − LoRA [95% CI] | McNemar p |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c['budget_s']:.0f} ({c['lora_step']}) | {c['reft_step']} | {c['reft']:.3f} | {c['lora']:.3f} "
                  f"| {c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] | {c['mcnemar_p']:.2g} |"
                  for c in at_equal_time(reft, lora)]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], task: str, path: Path) -> bool:
    """Two panels: accuracy against steps (log 2) and against CPU seconds; every lr, the best
    of each method drawn bold. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mine = [r for r in runs if r["task"] == task]
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = {"loreft": "tab:blue", "lora": "tab:orange"}
    for r in mine:
        top = best(runs, task, r["method"]) is r
        style = {"color": colors[r["method"]], "lw": 2.2 if top else 0.8, "alpha": 1 if top else 0.5,
                 "marker": "o", "ms": 3, "label": f"{r['method']} lr {r['lr']:g}" + (" (best)" if top else "")}
        acc = [p["accuracy"] for p in r["points"]]
        by_step.plot([p["step"] for p in r["points"]], acc, **style)
        by_time.plot([p["train_cpu_s"] for p in r["points"]], acc, **style)
    if mine and mine[0].get("majority") is not None:
        for ax in (by_step, by_time):
            ax.axhline(mine[0]["majority"], color="grey", ls=":", lw=1, label="majority label")
    by_step.set_xscale("log", base=2)
    by_step.set_xlabel("optimizer steps (batch 8)")
    by_time.set_xlabel("train CPU seconds (one thread)")
    by_step.set_ylabel(f"validation accuracy ({mine[0]['n_val'] if mine else 0} rows)")
    by_step.set_title(f"{task}: equal steps")
    by_time.set_title(f"{task}: equal CPU time")
    by_time.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out: Path) -> list[dict]:
    """summary.md and <task>.png from everything in out/runs.jsonl."""
    runs = read_runs(out / "runs.jsonl")
    if runs:
        (out / "summary.md").write_text(summary(runs))
        for task in dict.fromkeys(r["task"] for r in runs):
            plot(runs, task, out / f"{task}.png")
    return runs
