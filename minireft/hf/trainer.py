"""A ReftModel under `transformers.Trainer`: ReftTrainer, with minireft's optimizer and
adapter-only checkpoints.

The loss of one optimizer step over its micro-batches m (gradient accumulation) is

    L = (1 / N) Σ_m Σ_{targets i ∈ m} −log p(y_i | x_<i)        N = num_items_in_batch

(each micro-batch returns its sum / N, N counted by Trainer over labels[..., 1:] of the whole
step, and of every process), so accumulation gives one big batch's gradient, as in
minireft.hf.training.train. Without num_items_in_batch (evaluation) a batch's loss is its
mean over its own targets. Logits are built only where a target follows (minireft.hf.loss),
and on a CPU a batch runs as sub-batches of similar length (minireft.hf.batching.length_chunks,
as in train(): the same sum, less padding computed).

What differs from a plain Trainer:
- the optimizer is ReftOptimizer (Riemannian Adam on St(r, d) for every R, AdamW for the
  rest) from args.learning_rate, weight_decay, adam_beta1/2, adam_epsilon; the schedule is
  Trainer's (lr_scheduler_type, warmup_steps). An optimizer passed through `optimizers=`
  or `optimizer_cls_and_kwargs=` that would step an R as a Euclidean tensor is refused;
- a checkpoint folder holds the adapter as save_pretrained writes it (reft_config.json,
  reft_model.safetensors) plus Trainer's optimizer, scheduler, RNG and trainer state,
  never the base model's weights; resume_from_checkpoint restores the adapter bit for bit;
- the rows of a data set are encoded examples (minireft.hf.data.encode_examples:
  input_ids, labels, prompt_length), collated by ReftDataCollator (prompt_lengths reach
  ReftModel.forward, so only prompt tokens are edited);
- the base model stays frozen and in eval mode (no dropout) while the adapter trains.

Trainer.model is a thin module around the ReftModel (trainer.reft_model), not the
ReftModel itself: Trainer writes model.config.use_cache and aligns model.config's special
tokens with the tokenizer, and a ReftModel's config is its (frozen) ReftConfig.
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

from minireft import io
from minireft.hf.batching import CHUNK_OVERHEAD_TOKENS, length_chunks
from minireft.hf.data import collate, pad_id
from minireft.hf.model import ReftModel
from minireft.hf.loss import lm_loss_sum, target_logits
from minireft.torch.optim import ReftOptimizer

ENCODED_FIELDS = ("input_ids", "labels", "prompt_length")  # one row of encode_examples
TRAINING_ARGS_FILE = "training_args.bin"  # what Trainer writes beside a saved model


@dataclass
class ReftDataCollator:
    """Encoded examples (rows {"input_ids", "labels", "prompt_length"}, as encode_examples
    makes them) → one padded batch: minireft.hf.data.collate, i.e. input_ids, attention_mask,
    labels (B, T) and prompt_lengths (B,)."""

    pad_token_id: int = 0
    padding_side: str = "right"

    def __call__(self, features: Sequence[dict]) -> dict:
        for i, row in enumerate(features):
            missing = [k for k in ENCODED_FIELDS if k not in row]
            if missing:
                raise KeyError(
                    f"row {i} of the batch has no {missing} (its keys: {sorted(row)}); rows must be "
                    f"minireft.hf.data.encode_examples(tokenizer, examples) output, and a Trainer other than "
                    f"ReftTrainer needs TrainingArguments(remove_unused_columns=False) to keep 'prompt_length'")
        return collate(features, self.pad_token_id, padding_side=self.padding_side)


class _TrainerModel(nn.Module):
    """What Trainer holds: the ReftModel, whose base model stays in eval mode in training.

    loss_type tells Trainer the loss is causal (position t − 1 predicts token t), so that it
    counts num_items_in_batch over labels[..., 1:]."""

    loss_type = "ForCausalLM"

    def __init__(self, reft_model: ReftModel):
        super().__init__()
        self.reft_model = reft_model

    def forward(self, input_ids, attention_mask=None, prompt_lengths=None, **kwargs):
        return self.reft_model(input_ids, attention_mask, prompt_lengths=prompt_lengths, **kwargs)

    def train(self, mode: bool = True):
        """Interventions in `mode`; the base model in eval mode (its dropout off), except the
        flag of a block that checkpoints (Hugging Face checkpoints a block in training mode only)."""
        super().train(mode)
        base = self.reft_model.model
        base.eval()
        if mode:
            for module in base.modules():
                if getattr(module, "gradient_checkpointing", False) is True:
                    module.training = True
        return self

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **options):
        """TrainingArguments(activation_checkpointing=True): ReftModel.gradient_checkpointing_enable,
        whose checkpoint re-applies the edit in the recomputation (its own kwargs, not Trainer's)."""
        self.reft_model.gradient_checkpointing_enable()

    gradient_checkpointing_enable = activation_checkpointing_enable  # the transformers 4 name


class ReftTrainer(transformers.Trainer):
    """transformers.Trainer for a ReftModel (module docstring).

    model          a ReftModel (attach(...)); its active adapter trains
    train_dataset  encoded examples (list or datasets.Dataset of encode_examples rows)
    data_collator  default ReftDataCollator(pad id of processing_class, else 0)
    other arguments as transformers.Trainer; args.optim must be an Adam variant (ReftOptimizer
    replaces it)

    The saved reft_config.json records how prompts were built only if model.prompt_format is
    set (minireft.hf.prompt_format.prompt_format_of(tokenizer, chat_template)), as train() does.
    """

    def __init__(self, model: ReftModel, args: transformers.TrainingArguments | None = None,
                 data_collator=None, *, processing_class=None, **kwargs):
        if not isinstance(model, ReftModel):
            raise TypeError(f"model must be a ReftModel (minireft.hf.attach(model, config)), got "
                            f"{type(model).__name__}")
        if data_collator is None:
            data_collator = ReftDataCollator(pad_id(processing_class) if processing_class is not None else 0)
        self.reft_model = model
        super().__init__(_TrainerModel(model), args, data_collator, processing_class=processing_class, **kwargs)
        if self.args.device.type == "cpu" and self.args.dataloader_pin_memory:
            # Pinned memory only speeds copies to an accelerator; on a CPU torch's DataLoader warns
            # that it is unused, once per epoch. A copy, so the caller's arguments stay as given.
            self.args = copy.copy(self.args)
            self.args.dataloader_pin_memory = False
        if self.args.n_gpu > 1:
            raise ValueError(f"{self.args.n_gpu} GPUs in one process would train under nn.DataParallel, whose "
                             "replicas do not share the edit's hooks; launch one process per GPU (torchrun) "
                             "or set CUDA_VISIBLE_DEVICES to one GPU")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise NotImplementedError("ReftTrainer saves and restores the adapter itself: DeepSpeed and FSDP "
                                      "checkpoints are not supported; use plain DDP (torchrun)")
        optim = str(getattr(self.args.optim, "value", self.args.optim))  # an OptimizerNames enum
        if "adam" not in optim:
            raise ValueError(f"args.optim={optim!r}: ReftTrainer steps with ReftOptimizer (Riemannian "
                             "Adam on R, AdamW on the rest); leave optim at its default, or pass "
                             "optimizers=(ReftOptimizer(...), scheduler)")
        if self.args.label_names is None:
            self.label_names = ["labels"]  # ReftModel.forward has no `labels` to find it from
        self.model_accepts_loss_kwargs = True  # compute_loss divides by num_items_in_batch
        if self.optimizer is not None:
            check_optimizer(self.optimizer, model)

    # -- data

    def _set_signature_columns_if_needed(self) -> None:
        # The columns the collator reads, not ReftModel.forward's arguments: "prompt_length"
        # must survive remove_unused_columns.
        if self._signature_columns is None:
            self._signature_columns = list(ENCODED_FIELDS)

    # -- optimizer

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """ReftOptimizer.for_named_parameters over the active adapter: lr, weight_decay (never
        on R), betas and eps from self.args; an optimizer_cls_and_kwargs one is checked instead."""
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            a = self.args
            self.optimizer = ReftOptimizer.for_named_parameters(
                self.reft_model.named_trainable_parameters(), lr=a.learning_rate, weight_decay=a.weight_decay,
                betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon)
        elif self.optimizer is None:
            super().create_optimizer(model)
        check_optimizer(self.optimizer, self.reft_model)
        return self.optimizer

    # -- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Σ over the batch's targets of −log p / num_items_in_batch (or / its own N when None).

        inputs: the collated batch on the device. With return_outputs (evaluation) the outputs
        carry full (B, T, V) logits; otherwise logits are built at target positions only."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        if return_outputs:
            outputs = model(**inputs, use_cache=False)
            total, count = lm_loss_sum(outputs.logits, labels.cpu())
        else:
            total, count = 0, 0
            for part, part_labels in self._length_parts(inputs, labels):
                part_total, part_count = lm_loss_sum(*target_logits(model, part, part_labels,
                                                                    base=self.reft_model.model))
                total, count = total + part_total, count + part_count
        if num_items_in_batch is None:
            loss = total / max(count, 1)
        else:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                # N counts every process's targets and the processes' gradients are averaged.
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _length_parts(self, inputs: dict, labels: torch.Tensor):
        """(inputs, labels) of each sub-batch: rows of similar length (length_chunks), each cut
        to its longest row, on a CPU with ReftDataCollator's padding; the whole batch otherwise."""
        collator, mask = self.data_collator, inputs.get("attention_mask")
        if not isinstance(collator, ReftDataCollator) or mask is None or labels.device.type != "cpu":
            yield inputs, labels
            return
        lengths = mask.sum(1).tolist()  # (B,) real tokens per row
        for rows in length_chunks(list(range(len(lengths))), lengths, CHUNK_OVERHEAD_TOKENS):
            index, width = torch.tensor(rows), max(lengths[i] for i in rows)
            cols = slice(0, width) if collator.padding_side == "right" else slice(mask.shape[1] - width, None)
            part = {k: (v[index][:, cols] if v.dim() == 2 else v[index]) for k, v in inputs.items()}
            yield part, labels[index][:, cols]

    # -- checkpoints

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The adapter (reft_config.json, reft_model.safetensors), the tokenizer if any and the
        training arguments into output_dir (default args.output_dir); other files there stay."""
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if self.args.should_save:
            write_adapter_files(self.reft_model, output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(str(output_dir))
            torch.save(self.args, output_dir / TRAINING_ARGS_FILE)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        restore_adapter(self.reft_model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        restore_adapter(self.reft_model, self.state.best_model_checkpoint)


def check_optimizer(optimizer: torch.optim.Optimizer, reft_model: ReftModel) -> None:
    """Raise ValueError if `optimizer` holds a trainable R of `reft_model` other than in a
    ReftOptimizer group with manifold="stiefel": any other update leaves St(r, d)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps one
    names = {id(p): name for name, p in reft_model.named_trainable_parameters() if name.split(".")[-1] == "R"}
    fix = ("pass optimizers=(None, scheduler) to let ReftTrainer build ReftOptimizer, or build one with "
           "ReftOptimizer.for_named_parameters(reft_model.named_trainable_parameters(), lr=...)")
    for group in inner.param_groups:
        for p in group["params"]:
            if id(p) not in names:
                continue
            reft_optimizer = isinstance(inner, ReftOptimizer)
            if reft_optimizer and group.get("manifold") == "stiefel":
                continue
            where = ("in a group without manifold='stiefel'" if reft_optimizer
                     else "as a Euclidean tensor")
            raise ValueError(f"optimizer {type(inner).__name__} holds R {names[id(p)]!r} {where}: its update "
                             f"would leave R off the Stiefel manifold (R Rᵀ ≠ I); {fix}")


def write_adapter_files(reft_model: ReftModel, folder) -> Path:
    """reft_model.save_pretrained's two files into `folder`, each replaced atomically, leaving
    the folder's other files (optimizer state, checkpoint-* subfolders) alone."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".adapter-{uuid.uuid4().hex}"
    try:
        reft_model.save_pretrained(staging)
        for name in (io.WEIGHTS_FILE, io.CONFIG_FILE):  # the config last: a folder with it is an adapter
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def restore_adapter(reft_model: ReftModel, folder) -> None:
    """Copy the adapter saved in `folder` into reft_model's active adapter, bit for bit; its
    config must equal the active adapter's."""
    if folder is None or not io.is_adapter(folder):
        raise ValueError(f"{folder} holds no adapter ({io.CONFIG_FILE} is missing); resume from a checkpoint "
                         "folder that ReftTrainer wrote")
    config, params = io.load_adapter(folder)
    if config != reft_model.config:
        raise ValueError(f"the adapter in {folder} has config {config}, but this ReftModel's active adapter has "
                         f"{reft_model.config}; attach the model with the checkpoint's config")
    with torch.no_grad():
        for name, p in reft_model.interventions.named_parameters():
            p.copy_(torch.from_numpy(params[name]))
