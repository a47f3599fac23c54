"""Evaluate a language model, with or without an adapter, on {"prompt", "completion"} rows.

Three numbers, each computed identically for a ReftModel and for its bare base model (the
same token ids, the same batches; only the edit differs):

    loss          (1 / N) Σ_i −log p(y_i | x_<i) over the N completion tokens (and EOS) of
                  every row, tokenised as in training (minireft.hf.data.encode_example)
    exact match   mean over rows of [normalise(greedy completion) == normalise(completion)],
                  normalise(s) = " ".join(s.split()): leading and trailing whitespace dropped,
                  every inner run of whitespace one space; case and punctuation kept
    choice acc.   for rows with "choices": [c_1, …, c_K], the chosen c_k maximises the summed
                  (not length-normalised) log-probability of c_k's tokens after the prompt,
                      score(c) = Σ_{j} log p(c_j | prompt, c_<j)
                  and is right when it equals the row's "completion" (or choices[row["label"]])

chat_template=None (every function): the prompt format recorded with the adapter
(model.prompt_format), raw prompts when there is none (a bare model); pass True/False to
score a bare model as its adapter would be.

Greedy generation runs in batches with left padding (a row's positions count its real
tokens, as generate() makes them); the edit sees each row's prompt positions from the
attention mask, so a row's output does not depend on its batch-mates. Every function
batches rows of similar length together (longest first) and returns results in the input
order: a batch is padded to its longest row, so random batches of rows whose lengths vary
2-3x spend a third or more of their work on padding.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from minireft.hf.batching import batches_by_length
from minireft.hf.data import IGNORE_INDEX, collate, encode_examples, encode_prompt, pad_id
from minireft.hf.prompt_format import resolve_chat_template
from minireft.hf.loss import count_targets, infer_task, is_reft_model, loss_sum, model_device, target_logits
from minireft.hf.modes import eval_mode

EXTRA_NEW_TOKENS = 8  # generation budget beyond the longest reference completion


def normalise(text: str) -> str:
    """" ".join(text.split()): strip, and collapse inner whitespace runs to one space."""
    return " ".join(text.split())


def _chat(model, chat_template: bool | None) -> bool:
    """chat_template when given, else the adapter's recorded prompt format, else False."""
    return resolve_chat_template(getattr(model, "prompt_format", None), chat_template)


def _forward_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a right-padded batch on the model's device, logits built only where
    they are scored (minireft.hf.loss.target_logits); either pair it returns gives the same
    lm_loss_sum and _choice_log_probs. A ReftModel is told the prompt lengths."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if is_reft_model(model):
        inputs["prompt_lengths"] = batch["prompt_lengths"]
    return target_logits(model, inputs, batch["labels"])


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="row", disable=not progress, dynamic_ncols=True,
                file=sys.stderr, leave=False)


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


# ---------------------------------------------------------------------------- loss


@torch.no_grad()
def mean_loss(model, tokenizer=None, examples: Sequence[dict] | None = None, *, encoded=None,
              task: str | None = None, chat_template: bool | None = None, batch_size: int = 8,
              max_length: int = 512, padding_side: str = "right", progress: bool = False) -> dict:
    """{"loss": (1 / N) Σ_i −log p(y_i | x_<i), "targets": N} over the N targets of every row:
    completion tokens (and EOS) for "lm"; rows for "classification", with "accuracy" too.

    model: a ReftModel or a bare causal LM ("lm"), or a ReftClassifier ("classification");
    task defaults to what the model is. Pass raw `examples` (with `tokenizer`; tokenised as in
    training) or `encoded` (minireft.hf.data.encode_examples rows). Runs in eval mode (every
    module's mode comes back after), in batches of similar length, padded on `padding_side`:
    the sums do not depend on the batching, and each batch is minireft.hf.loss.loss_sum."""
    _check_batch_size(batch_size)
    task = infer_task(model, task)
    if encoded is None:
        chat = task == "lm" and _chat(getattr(model, "reft_model", model), chat_template)
        encoded = encode_examples(tokenizer, examples, task=task, chat_template=chat, max_length=max_length)
    pad = pad_id(tokenizer) if tokenizer is not None else 0
    total, count, correct = 0.0, 0, 0
    with eval_mode(model), _bar(len(encoded), "loss", progress) as bar:
        for rows in batches_by_length([len(e["input_ids"]) for e in encoded], batch_size):
            batch = collate([encoded[i] for i in rows], pad, padding_side=padding_side)
            loss, extra = loss_sum(model, batch, task)
            total += float(loss)
            count += count_targets(batch, task)
            correct += int(extra.get("correct", 0))
            bar.update(len(rows))
    result = {"loss": total / max(1, count), "targets": count}
    if task == "classification":
        result["accuracy"] = correct / max(1, count)
    return result


# ---------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: Sequence[str], *, chat_template: bool | None = None,
                    max_new_tokens: int = 64, batch_size: int = 8, progress: bool = False) -> list[str]:
    """Greedy completions (new tokens only, decoded without special tokens) of `prompts`,
    in batches of `batch_size` rows left-padded to their longest prompt."""
    _check_batch_size(batch_size)
    chat_template = _chat(model, chat_template)
    pad, device = pad_id(tokenizer), model_device(model)
    encoded = [encode_prompt(tokenizer, p, chat_template=chat_template) for p in prompts]
    out: list[str] = [""] * len(prompts)
    with _bar(len(prompts), "generate", progress) as bar:
        for rows in batches_by_length([len(x) for x in encoded], batch_size):
            ids = [encoded[i] for i in rows]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)  # (B, n)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
            generated = model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       do_sample=False, pad_token_id=pad)  # (B, n + new)
            for i, text in zip(rows, tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)):
                out[i] = text
            bar.update(len(ids))
    return out


def default_max_new_tokens(tokenizer, completions: Sequence[str]) -> int:
    """Enough for the longest reference completion plus EXTRA_NEW_TOKENS (a wrong answer
    need not be generated in full to be wrong)."""
    longest = max((len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions), default=0)
    return longest + EXTRA_NEW_TOKENS


def evaluate_generation(model, tokenizer, examples: Sequence[dict], *, chat_template: bool | None = None,
                        max_new_tokens: int | None = None, batch_size: int = 8,
                        progress: bool = False) -> dict:
    """{"exact_match": fraction, "n": rows, "generations": [str]} for greedy completions
    compared with each row's "completion" after `normalise`."""
    prompts = [ex["prompt"] for ex in examples]
    references = [ex["completion"] for ex in examples]
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(tokenizer, references)
    generations = generate_greedy(model, tokenizer, prompts, chat_template=chat_template,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    hits = [normalise(g) == normalise(r) for g, r in zip(generations, references)]
    return {"exact_match": sum(hits) / max(1, len(hits)), "n": len(hits), "generations": generations}


# ---------------------------------------------------------------------------- choices


def choice_index(example: dict, index: int = 0, *, where: str | None = None) -> int:
    """The index of the right choice: example["label"] when it is an int, else the position
    of example["completion"] in example["choices"]. Errors name the row as `where` (the CLI
    passes "file:line"), else "example {index}"."""
    where = where or f"example {index}"
    choices = example.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"{where}: 'choices' must be a list of >= 2 non-empty strings, got {choices!r}")
    label = example.get("label")
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(choices):
            raise ValueError(f"{where}: label {label} is outside choices 0..{len(choices) - 1}; give the "
                             f"index of the right choice, or drop 'label' and make the completion one of them")
        return label
    if example.get("completion") not in choices:
        raise ValueError(f"{where}: its completion {example.get('completion')!r} is none of its "
                         f"choices {choices}; give an int 'label' or a completion among the choices")
    return choices.index(example["completion"])


@torch.no_grad()
def score_choices(model, tokenizer, examples: Sequence[dict], *, chat_template: bool | None = None,
                  batch_size: int = 8, progress: bool = False) -> dict:
    """Score every choice of every row: {"accuracy", "n", "scores": [[score(c) per choice]],
    "predictions": [argmax index]} with score(c) = Σ_j log p(c_j | prompt, c_<j) (module doc).

    The prompt is tokenised as in training and generation; a choice's tokens follow it as a
    completion's would (no EOS). Ties go to the first choice. A row whose choices are all one
    token each ("A"/"B", "yes"/"no") is scored by one forward: the logits at the prompt's last
    position do not depend on the token after it (causal attention; the edit touches prompt
    positions only), so log p(c | prompt) of every choice is read there."""
    _check_batch_size(batch_size)
    chat_template = _chat(model, chat_template)
    answers = [choice_index(ex, i) for i, ex in enumerate(examples)]
    seqs, owners = [], []  # one sequence per (row, choice), or one per row of one-token choices
    for i, ex in enumerate(examples):
        prompt_ids = encode_prompt(tokenizer, ex["prompt"], chat_template=chat_template)
        choice_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in ex["choices"]]
        one_token = all(len(c) == 1 for c in choice_ids)
        for c in choice_ids[:1] if one_token else choice_ids:
            seqs.append({"input_ids": prompt_ids + c, "labels": [IGNORE_INDEX] * len(prompt_ids) + c,
                         "prompt_length": len(prompt_ids),
                         "picks": [ids[0] for ids in choice_ids] if one_token else None})
            owners.append(i)
    pad, device = pad_id(tokenizer), model_device(model)
    flat: list[list[float]] = [[] for _ in seqs]
    with _bar(len(seqs), "choices", progress) as bar:
        for rows in batches_by_length([len(q["input_ids"]) for q in seqs], batch_size):
            chunk = [seqs[j] for j in rows]
            batch = {k: v.to(device) for k, v in collate(chunk, pad).items()}
            for j, s in zip(rows, _choice_log_probs(*_forward_logits(model, batch), [q["picks"] for q in chunk])):
                flat[j] = s
            bar.update(len(chunk))
    scores: list[list[float]] = [[] for _ in examples]
    for owner, s in zip(owners, flat):
        scores[owner] += s
    predictions = [max(range(len(s)), key=lambda k, s=s: (s[k], -k)) for s in scores]
    correct = sum(p == a for p, a in zip(predictions, answers))
    return {"accuracy": correct / max(1, len(examples)), "n": len(examples), "scores": scores,
            "predictions": predictions}


def _choice_log_probs(logits: torch.Tensor, labels: torch.Tensor, picks: list) -> list[list[float]]:
    """Per row b: [Σ_t log softmax(logits[b, t−1])[labels[b, t]] over labels != -100] when
    picks[b] is None, else [log softmax(logits[b, t−1])[k] for k in picks[b]] at its one target t.

    labels: (B, T); logits: (B, T, V), or (B, T − 1, V) without the last position (as lm_loss_sum)."""
    targets = labels.to(logits.device)[:, 1:]  # (B, T−1)
    logits = logits[:, :targets.shape[1]]  # (B, T−1, V): the last position predicts nothing
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T−1, V)
    out = []
    for b, pick in enumerate(picks):
        cols = (targets[b] != IGNORE_INDEX).nonzero().squeeze(1)  # this row's target positions
        if pick is None:
            out.append([float(logp[b, cols, targets[b, cols]].sum())])
        else:
            out.append([float(x) for x in logp[b, cols[0], pick]])
    return out


# ---------------------------------------------------------------------------- all of it


def evaluate(model, tokenizer, examples: Sequence[dict], *, chat_template: bool | None = None,
             max_new_tokens: int | None = None, batch_size: int = 8, max_length: int = 512,
             generate: bool = True, progress: bool = False) -> dict:
    """{"loss", "targets", "exact_match", "n", "generations"} and, when some rows have
    "choices", {"choice_accuracy", "choice_n"}: every number of the module doc."""
    if isinstance(examples, (str, dict)) or not isinstance(examples, Sequence) or not examples:
        raise ValueError("examples must be a non-empty list of {'prompt', 'completion'} dicts")
    result = mean_loss(model, tokenizer, examples, chat_template=chat_template, batch_size=batch_size,
                       max_length=max_length, progress=progress)
    if generate:
        result |= evaluate_generation(model, tokenizer, examples, chat_template=chat_template,
                                      max_new_tokens=max_new_tokens, batch_size=batch_size,
                                      progress=progress)
    with_choices = [ex for ex in examples if "choices" in ex]
    if with_choices:
        scored = score_choices(model, tokenizer, with_choices, chat_template=chat_template,
                               batch_size=batch_size, progress=progress)
        result |= {"choice_accuracy": scored["accuracy"], "choice_n": scored["n"]}
    return result

