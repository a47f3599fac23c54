"""Train a ReFT adapter: the whole loop in one readable file.

One optimizer step sees S = batch_size · grad_accum examples, split into grad_accum
micro-batches. The loss of a step is the mean over every supervised target in the S
examples (completion tokens for "lm", examples for "classification"):

    L = (1 / N) Σ_{micro-batches m} Σ_{targets i ∈ m} −log p(y_i | x_<i)     N = Σ_m N_m

Each micro-batch backpropagates (Σ_{i ∈ m} ℓ_i) / N with N counted before any forward,
so the accumulated gradient equals one big batch's exactly (up to summation order),
however the targets spread over the micro-batches. Logits are built only at the positions
t − 1 whose token t is a target in some row of the micro-batch (the model's logits_to_keep,
or the head's input sliced), never at every position. Under torch.distributed each rank
takes a disjoint shard of every micro-batch and the gradients are summed across ranks
(minireft.hf.distributed): the same N, the same gradient. On a CPU, where a padded position
costs as much as a real one, a micro-batch whose rows differ in length runs as sub-batches
of similar length (length_chunks): the same rows and the same N, so the same gradient.

The learning rate warms up linearly over w = ⌈warmup_ratio · T⌉ of the T optimizer steps,
then decays linearly; optimizer step t = 1, …, T runs at

    lr_t = lr · t / w                  t <= w
    lr_t = lr · (T − t + 1) / (T − w)    t > w

so no step runs at lr 0 (the first at lr / w, the last at lr / (T − w)). T comes from the
data size, batch size and epochs / min_steps / max_steps (minireft.hf.recipe.schedule:
with epochs unset, a small data set still gets min_steps steps).

The base model stays frozen and in eval mode (no dropout); only the interventions (and
a classifier's head) train. The optimizer is the spec's: Riemannian Adam on St(r, d) for
every R (no weight decay), AdamW for the rest.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minireft import io
from minireft.hf import distributed
from minireft.hf.data import collate, encode_examples, pad_id
from minireft.hf.evaluation import mean_loss
from minireft.hf.loss import base_model, infer_task, loss_sum, model_device, targets_of
from minireft.hf.modes import enter_train_mode, eval_mode, restore_modes
from minireft.hf.prompt_format import prompt_format_of, training_chat_template
from minireft.hf.recipe import FEW_STEPS, LOG_FILE, PLOT_FILE, TRAIN, schedule
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
    epochs: int = 0
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


# ---------------------------------------------------------------------------- training


# The cost of one more forward and backward, in padded token positions, that length_chunks
# weighs against the padding a split saves: per-call work (hooks, kernels) that small CPU
# batches do not amortise. Measured (scripts/bench_chunks.py, SmolLM2, batch 8, 2 cores): of
# 0, 16, 64, 256, 64 is the fastest on PIQA rows (0.846x the whole batch's step; 0 is 1.072x)
# and ties the whole batch on short constraint rows (0.995x; 0 is 1.452x).
CHUNK_OVERHEAD_TOKENS = 64


def length_chunks(rows: list[int], lengths, overhead: int = CHUNK_OVERHEAD_TOKENS) -> list[list[int]]:
    """`rows` (example indices, lengths[i] tokens each; lengths a list or dict) partitioned
    into sub-batches of similar length that minimise Σ_chunks (overhead + |chunk| · max length
    in the chunk), the padded positions a CPU computes: rows sorted by length (ties in input
    order), cut into runs by dynamic programming. One chunk when rows are of one length."""
    order = [i for _, _, i in sorted((lengths[i], k, i) for k, i in enumerate(rows))]
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: the cost of order[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last chunk is order[i:j]; its longest row is order[j − 1]
            cost = best[i] + overhead + (j - i) * lengths[order[j - 1]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(order[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


def _train_step(model, encoded, groups, task, pad, device, padding_side,
                loss_sum=loss_sum) -> tuple[torch.Tensor, int]:
    """Accumulate the gradient of one optimizer step over its micro-batches (this rank's shard
    of each, see minireft.hf.distributed); return (this rank's summed loss, a 0-d tensor on
    `device`, and N, the targets of the whole step on every rank, counted on the host).
    loss_sum(model, batch, task) -> (summed loss, extra): minireft.hf.loss.loss_sum unless
    given (the benchmark's LoRA baseline passes its own, to train the same way)."""
    rank, world = distributed.rank_and_world()
    n_targets = sum(targets_of(encoded[i], task) for idx in groups for i in idx)
    total = None
    for idx in groups:
        mine = distributed.shard(idx, rank, world)
        if not mine:  # a short last micro-batch: this rank has no row of it
            continue
        chunks = [mine] if device.type != "cpu" else \
            length_chunks(mine, {i: len(encoded[i]["input_ids"]) for i in mine}, CHUNK_OVERHEAD_TOKENS)
        for rows in chunks:
            loss, _ = loss_sum(model, collate([encoded[i] for i in rows], pad, padding_side=padding_side), task)
            (loss / max(1, n_targets)).backward()
            total = loss.detach() if total is None else total + loss.detach()
    return (torch.zeros((), device=device) if total is None else total), n_targets


def _run_eval(model, tokenizer, eval_encoded, eval_fn, task, batch_size, step, epoch) -> dict:
    record = {"step": step, "epoch": epoch}
    if eval_encoded is not None:
        record |= mean_loss(model, tokenizer, encoded=eval_encoded, task=task, batch_size=batch_size)
    if eval_fn is not None:
        value = eval_fn(model)
        record |= value if isinstance(value, dict) else {"eval_fn": value}
    return record


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
    for at least min_steps; max_steps caps T; see minireft.hf.recipe) and warns when T < 20.
    The learning rate follows the module docstring's warmup and decay. Evaluation (mean held-out
    loss, plus eval_fn(model) if given) runs after every epoch and every `eval_every` steps.
    Defaults: minireft.hf.recipe.TRAIN. chat_template=None wraps "lm" prompts in the tokenizer's
    chat template when it has one. The prompt format (chat template or not, and the template's
    hash) is recorded on the ReftModel (its prompt_format) and saved with the adapter.

    output_dir: nothing is lost. An adapter already there is refused before any work unless
    overwrite=True. The run writes into a fresh folder beside output_dir (checkpoints every
    `save_every` steps, then the final adapter, train_log.json with the loss of every step
    and the evaluations, and loss.png when matplotlib is installed) and renames it into
    output_dir only when training ends well. A run that stops (a non-finite loss, an exception,
    KeyboardInterrupt) leaves output_dir untouched, keeps its last completed step in a sibling
    folder <output_dir>.partial-<UTC time>, and re-raises with a note that names it.
    log_info: extra JSON fields for train_log.json (the CLI records its arguments).

    gradient_checkpointing: recompute each block's activations in backward instead of keeping
    them (ReftModel.gradient_checkpointing_enable; the same gradients, less memory).

    Host-device syncs: one per step, the non-finite check (it reads the step's loss before
    the optimizer step); each micro-batch's mask is checked on its host copy, and its edit
    plan, logit positions and targets go to the device asynchronously. The losses stay on
    the device and are read every `log_every` steps (or every REFRESH_STEPS for the progress
    bar), before an evaluation or a save, and at the end.

    Inside an initialised torch.distributed process group (e.g. under torchrun) every rank
    runs a disjoint shard of each micro-batch, the gradients are all-reduced, and only rank 0
    writes output_dir, logs and shows the bar; batch_size is the global micro-batch and must
    be divisible by the number of processes (minireft.hf.distributed). The run is the same
    as one process's with the same seed and batch_size (intervention dropout aside: its
    random draws depend on the shard).

    The model keeps its last completed step however training ends (a non-finite loss stops
    before its step). progress=False prints nothing unless log_every is set. Same seed, data
    and device → the same parameters, bit for bit on CPU.
    """
    rank, world = distributed.rank_and_world()
    settings = {"examples": len(train_examples), "epochs": epochs, "min_steps": min_steps,
                "max_steps": max_steps, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr,
                "weight_decay": weight_decay, "warmup_ratio": warmup_ratio, "seed": seed,
                "chat_template": chat_template, "max_length": max_length, "padding_side": padding_side}
    error, out, encoded = None, None, None
    try:  # every check before any work; under torch.distributed every rank learns of any failure
        task = infer_task(model, task)
        chat_template = settings["chat_template"] = training_chat_template(tokenizer, chat_template, task)
        for name, value in (("batch_size", batch_size), ("grad_accum", grad_accum), ("min_steps", min_steps)):
            _check_count(name, value)
        for name, value in (("epochs", epochs), ("max_steps", max_steps)):
            if value is not None:
                _check_count(name, value, "None or ")
        distributed.check_batch(batch_size, world)
        if output_dir is not None and rank == 0:  # refuse before any work; only rank 0 writes
            out = _Output(output_dir, overwrite)
        _check_frozen(model)
        encoded, eval_encoded = _encode_all(model, tokenizer, train_examples, eval_examples, task,
                                            chat_template, max_length)
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        error = exc
    distributed.agree({} if world == 1 else _run_identity(model, settings, error, gradient_checkpointing,
                                                          encoded), error)
    generator = seed_everything(seed)
    settings = {"task": task, **settings, "examples": len(encoded)}
    epochs, _, total_steps = schedule(len(encoded), batch_size=batch_size, grad_accum=grad_accum,
                                      epochs=epochs, min_steps=min_steps, max_steps=max_steps)
    if total_steps < FEW_STEPS and rank == 0:
        warnings.warn(f"this run takes {total_steps} optimizer step(s), fewer than {FEW_STEPS}: it may "
                      f"learn little; leave epochs unset (at least {min_steps} steps) or raise "
                      f"epochs / max_steps", UserWarning, stacklevel=2)
    _record_prompt_format(model, tokenizer, task, chat_template)
    optimizer, scheduler = make_optimizer(model, lr=lr, weight_decay=weight_decay,
                                          warmup_ratio=warmup_ratio, total_steps=total_steps)
    params = [p for _, p in model.named_trainable_parameters()]
    distributed.broadcast_parameters(params)
    result = TrainResult(total_steps=total_steps, epochs=epochs)
    pad, device = pad_id(tokenizer), model_device(model)
    log = _Log(progress and rank == 0, log_every if rank == 0 else None, total_steps)
    pending: list[torch.Tensor] = []  # losses of finished steps not yet read from the device

    def read_losses() -> None:
        """The pending losses into result.losses (one device read), logged."""
        if pending:
            first = len(result.losses) + 1
            result.losses.extend(torch.stack(pending).tolist())
            pending.clear()
            log.losses(first, result.losses[first - 1:], result.lrs[first - 1:])

    def evaluate_now(epoch):
        read_losses()
        result.evals.append(_evaluate_in_training(model, tokenizer, eval_encoded, eval_fn, task,
                                                  batch_size, result.steps, epoch))
        log.eval(result.evals[-1])

    def train_log(stopped=None) -> dict:
        read_losses()
        result.seconds = time.perf_counter() - start
        return {"settings": settings, **(log_info or {}), **result.to_dict(), "stopped": stopped}

    wants_eval = eval_encoded is not None or eval_fn is not None
    before = enter_train_mode(model, gradient_checkpointing)
    start = time.perf_counter()
    try:
        if out is not None:
            out.start()
        for epoch in range(epochs):
            for groups in step_groups(len(encoded), batch_size, grad_accum, generator):
                if result.steps >= total_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss_sum, n_targets = _train_step(model, encoded, groups, task, pad, device, padding_side)
                loss = distributed.all_reduce_step(params, loss_sum) / max(1, n_targets)
                if not bool(torch.isfinite(loss)):  # the step's one host read: a check on data
                    raise FloatingPointError(f"the loss of step {result.steps + 1} is {float(loss)}; the "
                                             f"model keeps step {result.steps}'s parameters (lower lr?)")
                lr_now = optimizer.param_groups[0]["lr"]
                optimizer.step()  # all or nothing: an interrupt leaves the last step's values
                result.steps += 1  # first: the model now holds this step's parameters
                scheduler.step()
                result.lrs.append(lr_now)
                pending.append(loss.detach())
                result.targets += n_targets
                log.step()
                if result.steps % (log_every or REFRESH_STEPS) == 0:
                    read_losses()
                if wants_eval and eval_every and result.steps % eval_every == 0:
                    evaluate_now(epoch)
                if out is not None and save_every and result.steps % save_every == 0:
                    out.save(model, result.steps, train_log())
            if wants_eval and not (result.evals and result.evals[-1]["step"] == result.steps):
                evaluate_now(epoch)
            if result.steps >= total_steps:
                break
        read_losses()  # before the bar closes: it shows the last loss
    except BaseException as exc:
        with contextlib.suppress(Exception):  # a failed device cannot be read: keep the error
            read_losses()
        if out is not None:
            log.close()
            out.stop(model, result, exc, train_log)
        raise
    finally:
        log.close()
        optimizer.zero_grad(set_to_none=True)
        restore_modes(before)
        result.seconds = time.perf_counter() - start
    read_losses()
    if out is not None:
        out.finish(model, result, train_log())
    return result


# Without log_every, the bar's loss is read from the device every this many steps.
REFRESH_STEPS = 16


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


def _evaluate_in_training(model, tokenizer, eval_encoded, eval_fn, task, batch_size, step, epoch):
    """An evaluation between steps, model in eval mode; the training modes come back after."""
    with eval_mode(model):  # eval_fn, too, sees the model without dropout
        return _run_eval(model, tokenizer, eval_encoded, eval_fn, task, batch_size, step, epoch)


class _Log:
    """The tqdm bar (loss and lr in its postfix) and the log lines, on stderr."""

    def __init__(self, progress: bool, log_every: int | None, total_steps: int):
        self.log_every = log_every
        self.verbose = progress or bool(log_every)
        self.total = total_steps
        self.bar = tqdm(total=total_steps, desc="train", unit="step", disable=not progress,
                        dynamic_ncols=True, file=sys.stderr)

    def step(self) -> None:
        self.bar.update(1)

    def losses(self, first: int, losses: list[float], lrs: list[float]) -> None:
        """Steps first, first + 1, … have just been read: the bar's postfix, the log lines."""
        self.bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lrs[-1]:.2e}", refresh=True)
        for step, (loss, lr) in enumerate(zip(losses, lrs), start=first):
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


# ---------------------------------------------------------------------------- output folder

class _Output:
    """A run's adapter folder: staged beside `path` while training runs, renamed into `path`
    when it ends well, kept as a sibling partial folder when it stops (module minireft.io)."""

    def __init__(self, path, overwrite: bool):
        self.path = Path(path)
        io.check_output(self.path, overwrite=overwrite)
        self.staging: Path | None = None
        self.saved_step = 0

    def start(self) -> None:
        self.staging = io.staging_dir(self.path)

    def save(self, model, step: int, log: dict) -> None:
        """The adapter of `step` and the log so far, into the staging folder (a checkpoint)."""
        model.save_pretrained(self.staging)  # replaces the folder: the log is written after it
        self.saved_step = step
        _write_json(self.staging / LOG_FILE, log)

    def finish(self, model, result: TrainResult, log: dict) -> None:
        if self.saved_step != result.steps:
            model.save_pretrained(self.staging)
        _write_json(self.staging / LOG_FILE, log)
        write_loss_plot(self.staging / PLOT_FILE, result)
        io.publish(self.staging, self.path)

    def stop(self, model, result: TrainResult, exc: BaseException, train_log) -> None:
        """After a failure: keep the last completed step in a partial folder, never touch
        self.path, and add one note to `exc` that says where the step went."""
        where = f"training stopped after step {result.steps} of {result.total_steps}"
        untouched = f"{self.path} is untouched"
        if self.staging is None or result.steps == 0:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
            _add_note(exc, f"{where}: nothing to keep; {untouched}")
            return
        try:
            if self.saved_step != result.steps:
                model.save_pretrained(self.staging)
            _write_json(self.staging / LOG_FILE,
                        train_log({"step": result.steps, "error": f"{type(exc).__name__}: {exc}"}))
            partial = io.keep_partial(self.staging, self.path)
        except (OSError, ValueError, RuntimeError) as error:  # a full disk, say: keep the original error
            shutil.rmtree(self.staging, ignore_errors=True)
            _add_note(exc, f"{where}; saving that step failed ({type(error).__name__}: {error}); "
                           f"{untouched}")
            return
        _add_note(exc, f"{where}; its adapter is in {partial}; {untouched}")


def _add_note(exc: BaseException, note: str) -> None:
    """exc.add_note (Python >= 3.11; the traceback prints it), or the same __notes__ list on 3.10."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_loss_plot(path, result: TrainResult) -> bool:
    """loss.png: the training loss of every step, and the held-out losses (points), against
    the optimizer step. Skipped (returns False) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    figure = Figure(figsize=(6, 3.5), dpi=100)  # no pyplot: no global state, no display needed
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(range(1, len(result.losses) + 1), result.losses, label="train (per step)", linewidth=1)
    evals = [(e["step"], e["loss"]) for e in result.evals if isinstance(e.get("loss"), float)]
    if evals:
        ax.plot(*zip(*evals), "o", label="held out")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean loss per target")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    figure.savefig(path)
    return True
