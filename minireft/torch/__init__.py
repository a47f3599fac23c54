"""minireft.torch: the PyTorch mirror of the NumPy spec, and Hugging Face integration.

`loreft`, `direft`, `stiefel` and `optim` carry the spec's functions under the same
names, on torch tensors. `attach(model, config)` edits a Hugging Face model's
residual stream; `ReftModel` trains, generates, saves and loads.
"""

from __future__ import annotations

import numpy as np
import torch

from minireft import positions
from minireft.torch import direft, loreft, optim, stiefel
from minireft.torch.modules import Intervention
from minireft.torch.optim import ReftOptimizer

_LAZY = {
    "attach": "minireft.torch.model",
    "ReftModel": "minireft.torch.model",
    "train": "minireft.torch.training",
    "load_model": "minireft.torch.hub",
}


def to_backend(x: np.ndarray) -> torch.Tensor:
    """The conformance checker's array adapter: NumPy in, torch (same dtype) out."""
    return torch.from_numpy(np.ascontiguousarray(x))


def to_numpy(x) -> np.ndarray:
    """The conformance checker's array adapter: torch (or NumPy) in, NumPy out."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minireft.torch' has no attribute {name!r}")


__all__ = [
    "Intervention",
    "ReftModel",
    "ReftOptimizer",
    "attach",
    "direft",
    "load_model",
    "loreft",
    "optim",
    "positions",
    "stiefel",
    "to_backend",
    "to_numpy",
    "train",
]
