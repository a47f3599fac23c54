"""Train a ReFT adapter: the whole loop in one readable file.

One optimizer step sees S = batch_size · grad_accum examples, split into grad_accum
micro-batches. The loss of a step is the mean over every supervised target in the S
examples (completion tokens for "lm", examples for "classification"):

    L = (1 / N) Σ_{micro-batches m} Σ_{targets i ∈ m} −log p(y_i | x_<i)     N = Σ_m N_m

Each micro-batch backpropagates (Σ_{i ∈ m} ℓ_i) / N with N counted before any forward,
so the accumulated gradient equals one big batch's exactly (up to summation order),
however the targets spread over the micro-batches.

The learning rate follows a linear warmup then a linear decay to 0 (as Hugging Face's
get_linear_schedule_with_warmup), with K = ⌈warmup_ratio · total_steps⌉:

    lr(t) = lr · t / K                                  t < K
    lr(t) = lr · (total_steps − t) / (total_steps − K)   t >= K       (t = 0, 1, … the step index)

so with warmup the first step runs at lr 0 (as in HF; Adam's moments still take its gradient).

The base model stays frozen and in eval mode (no dropout); only the interventions (and
a classifier's head) train. The optimizer is the spec's: Riemannian Adam on St(r, d) for
every R (no weight decay), AdamW for the rest.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minireft.hf.data import IGNORE_INDEX, collate, encode_examples, pad_id
from minireft.torch.optim import ReftOptimizer


@dataclass
class TrainResult:
    """What a run did. losses[t] and lrs[t] belong to optimizer step t; evals holds one
    record {"step", "epoch", "loss", …} per evaluation."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    steps: int = 0
    total_steps: int = 0
    targets: int = 0  # supervised completion tokens (lm) or examples (classification) seen
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (intervention dropout draws from torch's global RNG);
    return a separate generator for shuffling so the order depends on `seed` alone."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def linear_schedule(warmup_steps: int, total_steps: int):
    """The factor lr(t) / lr of the module docstring, for torch.optim.lr_scheduler.LambdaLR."""

    def factor(t: int) -> float:
        if t < warmup_steps:
            return t / max(1, warmup_steps)
        return max(0.0, (total_steps - t) / max(1, total_steps - warmup_steps))

    return factor


def make_optimizer(model, *, lr: float, weight_decay: float = 0.0, warmup_ratio: float = 0.1,
                   total_steps: int = 1):
    """(ReftOptimizer over model.named_trainable_parameters(), LambdaLR linear warmup + decay)."""
    if not 0 <= warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
    optimizer = ReftOptimizer.for_named_parameters(
        model.named_trainable_parameters(), lr=lr, weight_decay=weight_decay)
    warmup_steps = math.ceil(warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup_steps, total_steps))
    return optimizer, scheduler


def _base_model(model):
    """The frozen HF model under a ReftModel, or under a ReftClassifier's ReftModel."""
    inner = getattr(model, "reft_model", model)
    return inner.model


def _check_frozen(model) -> None:
    unfrozen = [n for n, p in _base_model(model).named_parameters() if p.requires_grad]
    if unfrozen:
        raise RuntimeError(
            f"{len(unfrozen)} base-model parameter(s) require grad (e.g. {unfrozen[0]!r}); ReFT trains "
            "the interventions only: attach() freezes the base model, so re-attach or call "
            "requires_grad_(False) on it"
        )
    if not any(True for _ in model.named_trainable_parameters()):
        raise RuntimeError("the model has no trainable parameters; was it built with attach()?")


def _infer_task(model, task: str | None) -> str:
    is_classifier = hasattr(model, "head") and hasattr(model, "reft_model")
    inferred = "classification" if is_classifier else "lm"
    if task is None:
        return inferred
    if task != inferred:
        raise ValueError(
            f"task={task!r} but the model is a {type(model).__name__}: classification needs a "
            "minireft.hf.classify.ReftClassifier, language modelling a ReftModel"
        )
    return task


def _check_labels(encoded, num_labels: int, what: str) -> None:
    for i, e in enumerate(encoded):
        if e["labels"] >= num_labels:
            raise ValueError(f"{what}[{i}] has label {e['labels']}, but the classifier has "
                             f"num_labels={num_labels} (labels 0..{num_labels - 1})")


def _device(model) -> torch.device:
    return next(_base_model(model).parameters()).device


# ---------------------------------------------------------------------------- loss


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(Σ_i −log softmax(logits[b, t−1])[labels[b, t]], N) over the N targets labels[b, t] != -100.

    logits: (B, T, V); labels: (B, T). Position t−1 predicts token t (the shift); the
    cross-entropy is taken in at least float32 (bf16/fp16 logits are upcast).
    """
    targets = labels[:, 1:]  # (B, T−1)
    mask = targets != IGNORE_INDEX  # (B, T−1)
    picked = logits[:, :-1][mask]  # (N, V): only supervised positions, to save memory
    picked = picked.to(torch.promote_types(picked.dtype, torch.float32))  # bf16/fp16 → float32
    loss = F.cross_entropy(picked, targets[mask], reduction="sum")
    return loss, int(mask.sum())


def _count_targets(batch: dict, task: str) -> int:
    if task == "lm":
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return int(batch["labels"].numel())


def _loss_sum(model, batch: dict, task: str) -> tuple[torch.Tensor, dict]:
    """(summed loss over the batch's targets, {"correct": …} for classification)."""
    if task == "lm":
        # With left padding, ReftModel.forward gives decoders position ids counting real tokens.
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    prompt_lengths=batch["prompt_lengths"], use_cache=False)
        loss, _ = lm_loss_sum(out.logits, batch["labels"])
        return loss, {}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   prompt_lengths=batch["prompt_lengths"])  # (B, C)
    loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
    return loss, {"correct": int((logits.argmax(-1) == batch["labels"]).sum())}


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------- batching


def step_groups(n: int, batch_size: int, grad_accum: int, generator: torch.Generator | None):
    """One epoch's example indices as [[micro-batch, …] per optimizer step]; shuffled with
    `generator` (None keeps the order). The last step may be short."""
    order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
    per_step = batch_size * grad_accum
    groups = []
    for start in range(0, n, per_step):
        chunk = order[start:start + per_step]
        groups.append([chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)])
    return groups


# ---------------------------------------------------------------------------- modes


def _enter_train_mode(model) -> dict:
    """Interventions (and head) in train mode, the base model in eval mode (its dropout off).
    Returns every submodule's previous mode, for `_restore_modes`."""
    before = {m: m.training for m in model.modules()}
    model.train()
    _base_model(model).eval()
    return before


def _restore_modes(before: dict) -> None:
    for module, training in before.items():
        module.training = training


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, tokenizer=None, examples=None, *, encoded=None, task: str | None = None,
             batch_size: int = 8, chat_template: bool = False, max_length: int = 512,
             padding_side: str = "right") -> dict:
    """Mean loss over every target of the held-out examples (token-weighted for "lm"),
    and accuracy for "classification". Pass raw `examples` (with `tokenizer`) or `encoded`."""
    task = _infer_task(model, task)
    if encoded is None:
        encoded = encode_examples(tokenizer, examples, task=task, chat_template=chat_template,
                                  max_length=max_length)
    pad = pad_id(tokenizer) if tokenizer is not None else 0
    before = {m: m.training for m in model.modules()}
    model.eval()
    total, count, correct = 0.0, 0, 0
    try:
        for start in range(0, len(encoded), batch_size):
            batch = _to(collate(encoded[start:start + batch_size], pad, padding_side=padding_side),
                        _device(model))
            loss, extra = _loss_sum(model, batch, task)
            total += float(loss.detach())
            count += _count_targets(batch, task)
            correct += extra.get("correct", 0)
    finally:
        _restore_modes(before)
    result = {"loss": total / max(1, count), "targets": count}
    if task == "classification":
        result["accuracy"] = correct / max(1, count)
    return result


# ---------------------------------------------------------------------------- training


def _safe_step(optimizer, params) -> None:
    """optimizer.step(), undone if interrupted midway (it updates parameters one by one),
    so the model always holds the parameters of its last completed step."""
    snapshot = [p.detach().clone() for p in params]
    try:
        optimizer.step()
    except BaseException:
        with torch.no_grad():
            for p, saved in zip(params, snapshot):
                p.copy_(saved)
        raise


def _train_step(model, encoded, groups, task, pad, device, padding_side) -> tuple[float, int]:
    """Accumulate the gradient of one optimizer step over its micro-batches; return
    (mean loss over the step's targets, number of targets)."""
    batches = [collate([encoded[i] for i in idx], pad, padding_side=padding_side) for idx in groups]
    n_targets = sum(_count_targets(b, task) for b in batches)
    total = 0.0
    for batch in batches:
        loss, _ = _loss_sum(model, _to(batch, device), task)
        (loss / max(1, n_targets)).backward()
        total += float(loss.detach())
    return total / max(1, n_targets), n_targets


def _run_eval(model, tokenizer, eval_encoded, eval_fn, task, batch_size, step, epoch) -> dict:
    record = {"step": step, "epoch": epoch}
    if eval_encoded is not None:
        record |= evaluate(model, tokenizer, encoded=eval_encoded, task=task, batch_size=batch_size)
    if eval_fn is not None:
        value = eval_fn(model)
        record |= value if isinstance(value, dict) else {"eval_fn": value}
    return record


def train(model, tokenizer, train_examples, *, eval_examples=None, task: str | None = None,
          epochs: int = 1, batch_size: int = 8, grad_accum: int = 1, lr: float = 4e-3,
          weight_decay: float = 0.0, warmup_ratio: float = 0.1, seed: int = 0,
          chat_template: bool = False, max_length: int = 512, max_steps: int | None = None,
          padding_side: str = "right", progress: bool = True, log_every: int | None = None,
          eval_fn=None, eval_every: int | None = None, output_dir=None,
          save_every: int | None = None) -> TrainResult:
    """Train `model`'s interventions (a ReftModel; a ReftClassifier for classification) in place.

    train_examples: [{"prompt", "completion"}] ("lm") or [{"text" | "prompt", "label"}]
    ("classification"); task defaults to what the model is. Each optimizer step sees
    batch_size · grad_accum examples; the learning rate warms up linearly over
    ⌈warmup_ratio · steps⌉ steps then decays linearly to 0. Evaluation (mean held-out loss,
    plus eval_fn(model) if given) runs after every epoch and every `eval_every` steps.
    With output_dir, the adapter is saved there every `save_every` steps, at the end, and
    when training stops on an exception (the model keeps its last completed step either way;
    a non-finite loss stops training before its step). progress=False prints nothing unless
    log_every is set. Same seed, data and device → the same parameters, bit for bit on CPU.
    """
    task = _infer_task(model, task)
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("grad_accum", grad_accum)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be None or an int >= 1, got {max_steps!r}")
    _check_frozen(model)
    generator = seed_everything(seed)
    encoded, eval_encoded = _encode_all(model, tokenizer, train_examples, eval_examples, task,
                                        chat_template, max_length)
    steps_per_epoch = math.ceil(len(encoded) / (batch_size * grad_accum))
    total_steps = min(max_steps or epochs * steps_per_epoch, epochs * steps_per_epoch)
    optimizer, scheduler = make_optimizer(model, lr=lr, weight_decay=weight_decay,
                                          warmup_ratio=warmup_ratio, total_steps=total_steps)
    params = [p for _, p in model.named_trainable_parameters()]
    result = TrainResult(total_steps=total_steps)
    pad, device = pad_id(tokenizer), _device(model)
    log = _Log(progress, log_every, total_steps)

    def evaluate_now(epoch):
        result.evals.append(_evaluate_in_training(model, tokenizer, eval_encoded, eval_fn, task,
                                                  batch_size, result.steps, epoch))
        log.eval(result.evals[-1])

    wants_eval = eval_encoded is not None or eval_fn is not None
    before = _enter_train_mode(model)
    start, saved_step = time.perf_counter(), -1
    try:
        for epoch in range(epochs):
            for groups in step_groups(len(encoded), batch_size, grad_accum, generator):
                if result.steps >= total_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss, n_targets = _train_step(model, encoded, groups, task, pad, device, padding_side)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"the loss of step {result.steps + 1} is {loss}; the model "
                                             f"keeps step {result.steps}'s parameters (lower lr?)")
                result.lrs.append(optimizer.param_groups[0]["lr"])
                _safe_step(optimizer, params)
                scheduler.step()
                result.losses.append(loss)
                result.steps += 1
                result.targets += n_targets
                log.step(result.steps, loss, result.lrs[-1])
                if wants_eval and eval_every and result.steps % eval_every == 0:
                    evaluate_now(epoch)
                if output_dir is not None and save_every and result.steps % save_every == 0:
                    model.save_pretrained(output_dir)
                    saved_step = result.steps
            if wants_eval and not (result.evals and result.evals[-1]["step"] == result.steps):
                evaluate_now(epoch)
            if result.steps >= total_steps:
                break
    except BaseException:
        if output_dir is not None and result.steps > 0 and saved_step != result.steps:
            model.save_pretrained(output_dir)  # the last completed step, so nothing is lost
        raise
    finally:
        log.close()
        optimizer.zero_grad(set_to_none=True)
        _restore_modes(before)
        result.seconds = time.perf_counter() - start
    if output_dir is not None and saved_step != result.steps:
        model.save_pretrained(output_dir)
    return result


def _encode_all(model, tokenizer, train_examples, eval_examples, task, chat_template, max_length):
    kwargs = {"task": task, "chat_template": chat_template, "max_length": max_length}
    encoded = encode_examples(tokenizer, train_examples, **kwargs)
    eval_encoded = None if eval_examples is None else encode_examples(tokenizer, eval_examples, **kwargs)
    if task == "classification":
        _check_labels(encoded, model.num_labels, "train_examples")
        _check_labels(eval_encoded or [], model.num_labels, "eval_examples")
    return encoded, eval_encoded


def _evaluate_in_training(model, tokenizer, eval_encoded, eval_fn, task, batch_size, step, epoch):
    """An evaluation between steps, model in eval mode; the training modes come back after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()  # eval_fn, too, sees the model without dropout
    try:
        return _run_eval(model, tokenizer, eval_encoded, eval_fn, task, batch_size, step, epoch)
    finally:
        _restore_modes(modes)


class _Log:
    """The tqdm bar (loss and lr in its postfix) and the log lines, on stderr."""

    def __init__(self, progress: bool, log_every: int | None, total_steps: int):
        self.log_every = log_every
        self.verbose = progress or bool(log_every)
        self.total = total_steps
        self.bar = tqdm(total=total_steps, desc="train", unit="step", disable=not progress,
                        dynamic_ncols=True, file=sys.stderr)

    def step(self, step: int, loss: float, lr: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if self.log_every and step % self.log_every == 0:
            self.write(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.3e}")

    def eval(self, record: dict) -> None:
        self.write("eval " + " ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))

    def write(self, line: str) -> None:
        if self.verbose:
            tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
