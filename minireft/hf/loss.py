"""The loss of one batch: logits at the target columns only, then the summed cross-entropy.

train(), ReftTrainer, the held-out evaluation and the benchmarks all compute a batch's loss
here. For a language model (labels (B, T), IGNORE_INDEX where nothing is supervised)
position t − 1 predicts token t:

    loss_sum = Σ_{(b, t): labels[b, t] ≠ -100} −log softmax(logits[b, t − 1])[labels[b, t]]
    N        = #{(b, t): labels[b, t] ≠ -100}

and the logits are built only at the K columns t − 1 whose token t is a target in some row
(logit_columns), through the model's logits_to_keep or a pre-hook on its output embeddings
(logits_at): the same loss as from the full (B, T, V) logits, without the other T − K
columns' vocabulary projections. For a classifier (labels (B,)) it is Σ_b −log softmax(
logits[b])[labels[b]]. Sums, not means: the caller divides by the N of a whole optimizer step
(training) or of a whole data set (evaluation), so a batch may be split freely.

Labels stay on the CPU: N and the supervised positions are read on the host, and only the
positions go to the device (asynchronously), so computing a loss makes no device sync.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F

from minireft.hf.data import IGNORE_INDEX
from minireft.torch.edit import EditPlan


def is_reft_model(model) -> bool:
    """Whether `model` is a ReftModel (it has interventions and a ReftConfig), not a bare model."""
    return hasattr(model, "interventions") and hasattr(model, "config")


def base_model(model):
    """The Hugging Face model that makes the logits: the frozen model under a ReftModel, under
    a ReftClassifier's or ReftTrainer's ReftModel (their .reft_model), or a bare model itself."""
    inner = getattr(model, "reft_model", model)
    return inner.model if is_reft_model(inner) else inner


def model_device(model) -> torch.device:
    """The device of the base model's weights (where a batch must go)."""
    return next(base_model(model).parameters()).device


def on_device(t: torch.Tensor, device) -> torch.Tensor:
    """t on `device`; from the CPU to CUDA through pinned memory, asynchronously (no sync)."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def infer_task(model, task: str | None) -> str:
    """"classification" for a ReftClassifier, "lm" for anything else; a given task must match."""
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


# ---------------------------------------------------------------------------- targets


def targets_of(example: dict, task: str) -> int:
    """Supervised targets of one encoded example: its completion tokens, or 1 (classification).
    A prompt is never empty, so the first label is never a target, whatever the padding."""
    if task == "lm":
        return sum(1 for y in example["labels"] if y != IGNORE_INDEX)
    return 1


def count_targets(batch: dict, task: str) -> int:
    """N of a collated batch: the targets labels[:, 1:] != -100 ("lm"), or its rows."""
    if task == "lm":
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return int(batch["labels"].numel())


# ---------------------------------------------------------------------------- lm loss


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(Σ_i −log softmax(logits[b, t−1])[labels[b, t]], N) over the N targets labels[b, t] != -100.

    labels: (B, T); logits: (B, T, V), or (B, T − 1, V) without the last position (it predicts
    nothing). Position t−1 predicts token t (the shift); only the N supervised rows of logits
    are gathered, and the cross-entropy is taken in at least float32 (bf16/fp16 upcast).
    labels may stay on the CPU when logits are on a device: N and the supervised positions
    are then read on the host, with no device sync.
    """
    B, T = labels.shape
    if logits.dim() != 3 or logits.shape[0] != B or logits.shape[1] not in (T, T - 1):
        raise ValueError(f"logits must be (B, T, V) or (B, T − 1, V) for labels (B, T) = {(B, T)}, "
                         f"got {tuple(logits.shape)}")
    targets = labels[:, 1:]  # (B, T−1)
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)  # (N,) each
    device = logits.device
    picked = logits[on_device(rows, device), on_device(cols, device)]  # (N, V): the supervised rows only
    picked = picked.to(torch.promote_types(picked.dtype, torch.float32))  # bf16/fp16 → float32
    loss = F.cross_entropy(picked, on_device(targets[rows, cols], device), reduction="sum")
    return loss, len(rows)


def logit_columns(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns (K,), kept labels (B, K + 1)) from CPU labels (B, T): the K positions t − 1
    whose next token t is a target in some row, and [-100, labels[:, columns + 1]], so that
    lm_loss_sum(logits at the columns (B, K, V), kept labels) is the loss of the full logits."""
    columns = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # (K,)
    ignore = torch.full((labels.shape[0], 1), IGNORE_INDEX, dtype=labels.dtype)
    return columns, torch.cat([ignore, labels[:, columns + 1]], dim=1)


@contextlib.contextmanager
def logits_at(model, columns: torch.Tensor, base=None):
    """Keyword arguments for the top-level model call that make it return logits at `columns`
    (K,) only: the base model's `logits_to_keep` when its forward takes one (softcapping and
    the like still apply), else a pre-hook on its output embeddings that keeps those hidden
    states. Yields {} (full logits) for a model with neither. base: the Hugging Face model
    that makes the logits (default: base_model(model))."""
    base = base_model(model) if base is None else base
    if "logits_to_keep" in inspect.signature(base.forward).parameters:
        yield {"logits_to_keep": columns}
        return
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        yield {}
        return
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][:, columns], *args[1:]))
    try:
        yield {}
    finally:
        handle.remove()


def target_logits(model, inputs: dict, labels: torch.Tensor, *,
                  base=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) for lm_loss_sum: model(**inputs) with logits built only at the K
    logit_columns of `labels` (B, T), so logits (B, K, V) with the kept labels (B, K + 1),
    on the CPU; (B, T, V) with labels (B, T) on the CPU for a model that cannot keep columns.
    Either pair gives the loss of the full logits.

    inputs: the model's keyword arguments, on its device (use_cache=False is added); labels
    on the CPU or the device; base as logits_at."""
    labels = labels.cpu()  # N and the columns are read on the host
    columns, kept = logit_columns(labels)
    with logits_at(model, on_device(columns, inputs["input_ids"].device), base=base) as keep:
        logits = model(**inputs, use_cache=False, **keep).logits
    return (logits, kept) if logits.shape[1] == len(columns) else (logits, labels)


# ---------------------------------------------------------------------------- a batch's loss


def loss_sum(model, batch: dict, task: str) -> tuple[torch.Tensor, dict]:
    """(summed loss over the batch's targets, a 0-d tensor on the model's device;
    {"correct": …} for classification, else {}).

    model: a ReftModel, a ReftClassifier ("classification"), or a bare causal LM (no edit).
    batch: collated on the CPU (minireft.hf.data.collate); it moves to the model's device here.
    A ReftModel gets the batch's prompt lengths and its EditPlan, built (and the mask checked)
    on the host. For "lm" the logits are built only at the target columns (target_logits)."""
    device = model_device(model)
    inputs = {k: on_device(batch[k], device) for k in ("input_ids", "attention_mask")}
    reft_model = getattr(model, "reft_model", model)  # a ReftClassifier's inner ReftModel
    if is_reft_model(reft_model):
        inputs["prompt_lengths"] = on_device(batch["prompt_lengths"], device)
        inputs["edit_plan"] = _edit_plan(reft_model, batch, device)
    if task == "lm":
        # With left padding, ReftModel.forward gives decoders position ids counting real tokens.
        loss, _ = lm_loss_sum(*target_logits(model, inputs, batch["labels"]))
        return loss, {}
    logits = model(**inputs)  # (B, C)
    labels = on_device(batch["labels"], device)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    return loss, {"correct": (logits.argmax(-1) == labels).sum()}


def _edit_plan(reft_model, batch: dict, device) -> EditPlan:
    """The batch's EditPlan from its CPU mask and prompt lengths (the check reads host memory),
    its (row, column) pairs sent to `device` asynchronously."""
    plan = EditPlan.from_mask(batch["attention_mask"], batch["prompt_lengths"], reft_model.config)
    pairs = {group: tuple(on_device(t, device) for t in pair) for group, pair in plan.pairs.items()}
    return EditPlan(pairs, plan.batch, plan.length)
