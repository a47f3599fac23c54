"""Train a ReFT adapter: the whole loop in one readable file.

One optimizer step sees S = batch_size · grad_accum examples, split into grad_accum
micro-batches. The loss of a step is the mean over every supervised target in the S
examples (completion tokens for "lm", examples for "classification"):

    L = (1 / N) Σ_{micro-batches m} Σ_{targets i ∈ m} −log p(y_i | x_<i)     N = Σ_m N_m

Each micro-batch backpropagates (Σ_{i ∈ m} ℓ_i) / N with N counted before any forward,
so the accumulated gradient equals one big batch's exactly (up to summation order),
however the targets spread over the micro-batches (train_step). Logits are built only at the positions
t − 1 whose token t is a target in some row of the micro-batch (the model's logits_to_keep,
or the head's input sliced), never at every position. Under torch.distributed each rank
takes a disjoint shard of every micro-batch and the gradients are summed across ranks
(minireft.hf.distributed): the same N, the same gradient. On a CPU, where a padded position
costs as much as a real one, a micro-batch whose rows differ in length runs as sub-batches
of similar length (minireft.hf.batching.length_chunks): the same rows and the same N, so the
same gradient.

The learning rate warms up linearly over w = ⌈warmup_ratio · T⌉ of the T optimizer steps,
then decays linearly; optimizer step t = 1, …, T runs at

    lr_t = lr · t / w                  t <= w
    lr_t = lr · (T − t + 1) / (T − w)    t > w

so no step runs at lr 0 (the first at lr / w, the last at lr / (T − w)). T comes from the
data size, batch size and epochs / min_steps / max_steps (minireft.hf.recipe.schedule:
with epochs unset, a small data set still gets min_steps steps).

The base model stays frozen and in eval mode (no dropout); only the interventions (and
a classifier's head) train (minireft.hf.modes). The optimizer is the spec's: Riemannian Adam
on St(r, d) for every R (no weight decay), AdamW for the rest.

Host-device syncs: one per step, the non-finite check (it reads the step's loss before the
optimizer step); each micro-batch's mask is checked on its host copy, and its edit plan,
logit positions and targets go to the device asynchronously (minireft.hf.loss). The losses
stay on the device and are read every `log_every` steps (or every REFRESH_STEPS for the
progress bar), before an evaluation or a save, and at the end (minireft.hf.run_output).

Under torch.distributed (e.g. torchrun) only rank 0 writes output_dir, logs and shows the
bar; batch_size is the global micro-batch and must be divisible by the number of processes.
The run is the same as one process's with the same seed and batch_size (intervention dropout
aside: its random draws depend on the shard).

Where the rest lives: a batch's loss in minireft.hf.loss, which rows run together in
minireft.hf.batching, the held-out loss in minireft.hf.evaluation.mean_loss, the run's
record and output folder in minireft.hf.run_output.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from minireft.hf import batching, distributed
from minireft.hf.batching import step_groups
from minireft.hf.data import collate, encode_examples, pad_id
from minireft.hf.evaluation import mean_loss
from minireft.hf.loss import base_model, infer_task, loss_sum, model_device, targets_of
from minireft.hf.modes import enter_train_mode, eval_mode, restore_modes
from minireft.hf.prompt_format import prompt_format_of, training_chat_template
from minireft.hf.recipe import FEW_STEPS, TRAIN, schedule
from minireft.hf.run_output import RunFolder, TrainLog, TrainResult
from minireft.torch.optim import ReftOptimizer


# ---------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (intervention dropout draws from torch's global RNG);
    return a separate generator for shuffling so the order depends on `seed` alone."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def linear_schedule(warmup_steps: int, total_steps: int):
    """The factor lr_t / lr of the module docstring as a function of s = t − 1 (LambdaLR counts
    steps from 0): (s + 1) / w while s < w, then (T − s) / (T − w)."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))

    return factor


def make_optimizer(model, *, lr: float = TRAIN.lr, weight_decay: float = TRAIN.weight_decay,
                   warmup_ratio: float = TRAIN.warmup_ratio, total_steps: int = 1):
    """(ReftOptimizer over model.named_trainable_parameters(), LambdaLR linear warmup + decay)."""
    if not 0 <= warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
    optimizer = ReftOptimizer.for_named_parameters(
        model.named_trainable_parameters(), lr=lr, weight_decay=weight_decay)
    warmup_steps = math.ceil(warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup_steps, total_steps))
    return optimizer, scheduler


def _check_frozen(model) -> None:
    unfrozen = [n for n, p in base_model(model).named_parameters() if p.requires_grad]
    if unfrozen:
        raise RuntimeError(
            f"{len(unfrozen)} base-model parameter(s) require grad (e.g. {unfrozen[0]!r}); ReFT trains "
            "the interventions only: attach() freezes the base model, so re-attach or call "
            "requires_grad_(False) on it"
        )
    if not any(True for _ in model.named_trainable_parameters()):
        raise RuntimeError("the model has no trainable parameters; was it built with attach()?")


def _check_labels(encoded, num_labels: int, what: str) -> None:
    for i, e in enumerate(encoded):
        if e["labels"] >= num_labels:
            raise ValueError(f"{what}[{i}] has label {e['labels']}, but the classifier has "
                             f"num_labels={num_labels} (labels 0..{num_labels - 1})")


# ---------------------------------------------------------------------------- one step


def train_step(model, encoded, groups, task, pad, device, padding_side,
               loss_sum=loss_sum) -> tuple[torch.Tensor, int]:
    """Accumulate the gradient of one optimizer step over its micro-batches `groups` (lists of
    indices into `encoded`; this rank's shard of each, see minireft.hf.distributed): each
    sub-batch backpropagates its summed loss / N. Returns (this rank's summed loss, a 0-d
    tensor on `device`, and N, the targets of the whole step on every rank, counted on the host).

    On a CPU each micro-batch runs as sub-batches of similar length (batching.length_chunks
    with batching.CHUNK_OVERHEAD_TOKENS). loss_sum(model, batch, task) -> (summed loss, extra):
    minireft.hf.loss.loss_sum unless given (the benchmark's LoRA baseline passes its own, to
    train the same way). No optimizer step: the caller zeroes and steps."""
    rank, world = distributed.rank_and_world()
    n_targets = sum(targets_of(encoded[i], task) for idx in groups for i in idx)
    total = None
    for idx in groups:
        mine = distributed.shard(idx, rank, world)
        if not mine:  # a short last micro-batch: this rank has no row of it
            continue
        lengths = {i: len(encoded[i]["input_ids"]) for i in mine}
        chunks = [mine] if device.type != "cpu" else \
            batching.length_chunks(mine, lengths, batching.CHUNK_OVERHEAD_TOKENS)
        for rows in chunks:
            loss, _ = loss_sum(model, collate([encoded[i] for i in rows], pad, padding_side=padding_side), task)
            (loss / max(1, n_targets)).backward()
            total = loss.detach() if total is None else total + loss.detach()
    return (torch.zeros((), device=device) if total is None else total), n_targets


def update(optimizer, scheduler, loss: torch.Tensor, result: TrainResult) -> float:
    """The optimizer step after the step's gradient: refuse a non-finite loss (the model keeps
    the last step's parameters), step, count the step, move the schedule on. Returns the lr the
    step ran at. The loss's one host read (the check) is the step's only device sync."""
    if not bool(torch.isfinite(loss)):  # a check on the data, before any parameter changes
        raise FloatingPointError(f"the loss of step {result.steps + 1} is {float(loss)}; the "
                                 f"model keeps step {result.steps}'s parameters (lower lr?)")
    lr_now = optimizer.param_groups[0]["lr"]
    optimizer.step()  # all or nothing: an interrupt leaves the last step's values
    result.steps += 1  # first: the model now holds this step's parameters
    scheduler.step()
    return lr_now


@dataclass
class HeldOut:
    """train()'s evaluations: the mean held-out loss of `encoded` (evaluation.mean_loss) and
    eval_fn(model), in eval mode (eval_fn, too, sees the model without dropout)."""

    model: object
    tokenizer: object
    encoded: list | None
    eval_fn: object
    task: str
    batch_size: int

    @property
    def wanted(self) -> bool:
        return self.encoded is not None or self.eval_fn is not None

    @staticmethod
    def done(result: TrainResult) -> bool:
        """Whether the last evaluation was at the current step (an epoch's end needs no other)."""
        return bool(result.evals) and result.evals[-1]["step"] == result.steps

    def __call__(self, run: TrainLog, epoch: int) -> None:
        """One record {"step", "epoch", "loss", …} into run, after the pending losses are read."""
        run.read_losses()
        record = {"step": run.result.steps, "epoch": epoch}
        with eval_mode(self.model):  # the training modes come back after
            if self.encoded is not None:
                record |= mean_loss(self.model, self.tokenizer, encoded=self.encoded, task=self.task,
                                    batch_size=self.batch_size)
            if self.eval_fn is not None:
                value = self.eval_fn(self.model)
                record |= value if isinstance(value, dict) else {"eval_fn": value}
        run.add_eval(record)


# ---------------------------------------------------------------------------- the loop


def train(model, tokenizer, train_examples, *, eval_examples=None, task: str | None = None,
          epochs: int | None = TRAIN.epochs, min_steps: int = TRAIN.min_steps,
          batch_size: int = TRAIN.batch_size, grad_accum: int = TRAIN.grad_accum, lr: float = TRAIN.lr,
          weight_decay: float = TRAIN.weight_decay, warmup_ratio: float = TRAIN.warmup_ratio,
          seed: int = TRAIN.seed, chat_template: bool | None = TRAIN.chat_template,
          max_length: int = TRAIN.max_length,
          max_steps: int | None = None, padding_side: str = "right", progress: bool = True,
          log_every: int | None = None, eval_fn=None, eval_every: int | None = None, output_dir=None,
          overwrite: bool = False, save_every: int | None = None, log_info: dict | None = None,
          gradient_checkpointing: bool = False) -> TrainResult:
    """Train `model`'s interventions (a ReftModel; a ReftClassifier for classification) in place.

    train_examples: [{"prompt", "completion"}] ("lm") or [{"text" | "prompt", "label"}]
    ("classification"); task defaults to what the model is. Each optimizer step sees
    batch_size · grad_accum examples; the run takes T steps (epochs=None: enough whole epochs
    for at least min_steps; max_steps caps T; minireft.hf.recipe) and warns when T < 20. The
    lr warms up and decays (module docstring). The held-out loss, and eval_fn(model) if given,
    run after every epoch and every `eval_every` steps. Defaults: minireft.hf.recipe.TRAIN.
    chat_template=None wraps "lm" prompts in the tokenizer's chat template when it has one; the
    prompt format is recorded on the ReftModel and saved with it.

    output_dir: nothing is lost (minireft.hf.run_output). An adapter there is refused before
    any work unless overwrite=True; the run is staged beside it (checkpoints every save_every
    steps, then the adapter, train_log.json (+ log_info) and loss.png) and renamed into it only
    when training ends well; a run that stops (a non-finite loss, an exception, an interrupt)
    leaves output_dir untouched, keeps its last step in <output_dir>.partial-<UTC time> and
    re-raises with a note naming it. gradient_checkpointing: recompute activations in backward.

    The model keeps its last completed step however training ends. progress=False prints
    nothing unless log_every is set. Same seed, data and device → the same parameters, bit for
    bit on CPU.
    """
    rank, world = distributed.rank_and_world()
    settings = {"examples": len(train_examples), "epochs": epochs, "min_steps": min_steps,
                "max_steps": max_steps, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr,
                "weight_decay": weight_decay, "warmup_ratio": warmup_ratio, "seed": seed,
                "chat_template": chat_template, "max_length": max_length, "padding_side": padding_side}
    writes = output_dir if rank == 0 else None  # only rank 0 writes
    task, encoded, eval_encoded, out = _checked_inputs(model, tokenizer, train_examples, eval_examples, task,
                                                       settings, writes, overwrite, gradient_checkpointing)
    generator = seed_everything(seed)
    settings = {"task": task, **settings, "examples": len(encoded)}
    epochs, _, total_steps = schedule(len(encoded), batch_size=batch_size, grad_accum=grad_accum,
                                      epochs=epochs, min_steps=min_steps, max_steps=max_steps)
    if total_steps < FEW_STEPS and rank == 0:
        _warn_few_steps(total_steps, min_steps)
    _record_prompt_format(model, tokenizer, task, settings["chat_template"])
    optimizer, scheduler = make_optimizer(model, lr=lr, weight_decay=weight_decay,
                                          warmup_ratio=warmup_ratio, total_steps=total_steps)
    params = [p for _, p in model.named_trainable_parameters()]
    distributed.broadcast_parameters(params)
    held_out = HeldOut(model, tokenizer, eval_encoded, eval_fn, task, batch_size)
    pad, device = pad_id(tokenizer), model_device(model)
    run = TrainLog(TrainResult(total_steps=total_steps, epochs=epochs), settings, log_info,
                   progress=progress and rank == 0, log_every=log_every if rank == 0 else None)
    result = run.result
    before = enter_train_mode(model, gradient_checkpointing)
    try:
        if out is not None:
            out.start()
        for epoch in range(epochs):
            for groups in step_groups(len(encoded), batch_size, grad_accum, generator):
                if result.steps >= total_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                summed, n_targets = train_step(model, encoded, groups, task, pad, device, padding_side)
                loss = distributed.all_reduce_step(params, summed) / max(1, n_targets)
                run.step(loss, update(optimizer, scheduler, loss, result), n_targets)
                if result.steps % (log_every or REFRESH_STEPS) == 0:
                    run.read_losses()
                if held_out.wanted and eval_every and result.steps % eval_every == 0:
                    held_out(run, epoch)
                if out is not None and save_every and result.steps % save_every == 0:
                    out.save(model, result.steps, run.to_json())
            if held_out.wanted and not held_out.done(result):
                held_out(run, epoch)
            if result.steps >= total_steps:
                break
        run.read_losses()  # before the bar closes: it shows the last loss
    except BaseException as exc:
        run.stopped(exc, out, model)  # the last completed step kept, a note on exc
        raise
    finally:
        run.close()
        optimizer.zero_grad(set_to_none=True)
        restore_modes(before)
        result.seconds = run.elapsed()
    run.read_losses()
    if out is not None:
        out.finish(model, result, run.to_json())
    return result


# Without log_every, the bar's loss is read from the device every this many steps.
REFRESH_STEPS = 16


# ---------------------------------------------------------------------------- checks


def _checked_inputs(model, tokenizer, train_examples, eval_examples, task, settings: dict, output_dir,
                    overwrite: bool, gradient_checkpointing: bool):
    """(task, encoded, eval_encoded, RunFolder or None) after every check, before any work;
    settings["chat_template"] resolved. Under torch.distributed every rank learns of any
    rank's failure (distributed.agree) and they all raise."""
    error, out, encoded, eval_encoded = None, None, None, None
    try:
        task = infer_task(model, task)
        chat_template = training_chat_template(tokenizer, settings["chat_template"], task)
        settings["chat_template"] = chat_template
        for name in ("batch_size", "grad_accum", "min_steps"):
            _check_count(name, settings[name])
        for name in ("epochs", "max_steps"):
            if settings[name] is not None:
                _check_count(name, settings[name], "None or ")
        distributed.check_batch(settings["batch_size"], distributed.rank_and_world()[1])
        if output_dir is not None:  # refuse an existing adapter before any work
            out = RunFolder(output_dir, overwrite)
        _check_frozen(model)
        encoded, eval_encoded = _encode_all(model, tokenizer, train_examples, eval_examples, task,
                                            chat_template, settings["max_length"])
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        error = exc
    world = distributed.rank_and_world()[1]
    distributed.agree({} if world == 1 else _run_identity(model, settings, error, gradient_checkpointing,
                                                          encoded), error)
    return task, encoded, eval_encoded, out


def _run_identity(model, settings: dict, error, gradient_checkpointing: bool, encoded) -> dict:
    """What every rank must agree on: the settings, the adapter, the data (hashed). After a
    failed check (error) only the settings: the rank's error is what gets reported."""
    identity = {**settings, "gradient_checkpointing": gradient_checkpointing}
    if error is not None:
        return identity
    config = getattr(getattr(model, "reft_model", model), "config", None)
    shapes = {n: list(p.shape) for n, p in model.named_trainable_parameters()}
    return {**identity, "config": getattr(config, "__dict__", repr(config)),
            "parameters": distributed.fingerprint(shapes), "data": distributed.fingerprint(encoded)}


def _warn_few_steps(total_steps: int, min_steps: int) -> None:
    warnings.warn(f"this run takes {total_steps} optimizer step(s), fewer than {FEW_STEPS}: it may "
                  f"learn little; leave epochs unset (at least {min_steps} steps) or raise "
                  f"epochs / max_steps", UserWarning, stacklevel=3)  # at train()'s caller


def _check_count(name: str, value, allowed: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be {allowed}an int >= 1, got {value!r}")


def _record_prompt_format(model, tokenizer, task: str, chat_template: bool) -> None:
    """Tell the ReftModel how its prompts are built, so that save_pretrained records it."""
    reft_model = getattr(model, "reft_model", model)  # a ReftClassifier's inner ReftModel
    reft_model.prompt_format = prompt_format_of(tokenizer, chat_template and task == "lm")


def _encode_all(model, tokenizer, train_examples, eval_examples, task, chat_template, max_length):
    kwargs = {"task": task, "chat_template": chat_template, "max_length": max_length}
    encoded = encode_examples(tokenizer, train_examples, **kwargs)
    eval_encoded = None if eval_examples is None else encode_examples(tokenizer, eval_examples, **kwargs)
    if task == "classification":
        _check_labels(encoded, model.num_labels, "train_examples")
        _check_labels(eval_encoded or [], model.num_labels, "eval_examples")
    return encoded, eval_encoded
