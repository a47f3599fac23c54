"""minireft.hf: ReFT on Hugging Face models, built on the PyTorch mirror (minireft.torch).

    blocks      finding a model's transformer blocks and hidden size (no per-model table)
    model       attach(model, config) -> ReftModel: hooks (minireft.torch.edit), forward,
                generate, save, load
    data        examples -> token ids and labels; batches
    training    train(), evaluate()
    generation  generate_text()
    classify    ReftClassifier: an encoder ReftModel plus a linear head
    loading     load_model(): a local folder, a cached hub name or the packaged SmolLM2
    jsonl       read_jsonl / write_jsonl (no torch)

Names are imported lazily, so `minireft.hf.jsonl` works without torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "attach": "minireft.hf.model",
    "ReftModel": "minireft.hf.model",
    "train": "minireft.hf.training",
    "evaluate": "minireft.hf.training",
    "generate_text": "minireft.hf.generation",
    "ReftClassifier": "minireft.hf.classify",
    "load_model": "minireft.hf.loading",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minireft.hf' has no attribute {name!r}")


__all__ = sorted(_LAZY)
