"""minireft.torch: the PyTorch mirror of the NumPy spec.

`loreft`, `direft`, `noreft`, `consreft`, `lobireft`, `ortho_direft`, `stiefel`, `optim`,
`edit` / `edit_vjp` (the in-model edit) and `packed_edit` (an engine's flat batch) carry the
spec's functions under the same names, on torch tensors; `Intervention` and `ReftOptimizer` are the modules built on them.
The mirror names nothing above it: attach, ReftModel, train and load_model live in `minireft.hf`.
"""

from __future__ import annotations

import numpy as np
import torch

from minireft import positions
from minireft.torch import consreft, direft, lobireft, loreft, noreft, optim, ortho_direft, stiefel
from minireft.torch.edit import edit, edit_vjp, packed_edit  # the functions; the module is minireft.torch.edit
from minireft.torch.modules import Intervention
from minireft.torch.optim import ReftOptimizer


def to_backend(x: np.ndarray) -> torch.Tensor:
    """The conformance checker's array adapter: NumPy in, torch (same dtype) out."""
    return torch.from_numpy(np.ascontiguousarray(x))


def to_numpy(x) -> np.ndarray:
    """The conformance checker's array adapter: torch (or NumPy) in, NumPy out."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


__all__ = [
    "Intervention",
    "ReftOptimizer",
    "consreft",
    "direft",
    "edit",
    "edit_vjp",
    "lobireft",
    "loreft",
    "noreft",
    "optim",
    "packed_edit",
    "ortho_direft",
    "positions",
    "stiefel",
    "to_backend",
    "to_numpy",
]
