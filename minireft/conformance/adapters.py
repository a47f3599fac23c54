"""How arrays cross into a backend and back, and how a backend is found by name."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Adapter:
    """How arrays cross into a backend and back.

    to_backend(a): a is a NumPy array of the dtype under test; return the backend's array.
    to_numpy(x):   x is an array the backend returned; return a NumPy array. Python
                   numbers and lists, and NumPy values, never reach it.
    """

    name: str
    to_backend: object
    to_numpy: object


def generic_to_numpy(x) -> np.ndarray:
    """A backend result as a fresh NumPy array: torch-like objects by .detach().cpu().numpy(),
    anything else by np.asarray (JAX, CuPy's __array__, Python scalars and lists)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.array(x, copy=True)


def _torch_adapter(device: str | None = None) -> Adapter:
    import torch  # only when a torch backend is checked

    def to_backend(a: np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(device) if device is not None else t

    return Adapter(f"torch ({device or 'cpu'})", to_backend, generic_to_numpy)


def _uses_torch(backend) -> bool:
    """True when the backend's modules hold a reference to an already imported torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    for part in (backend, *(getattr(backend, n, None) for n in ("loreft", "direft", "stiefel", "optim"))):
        if isinstance(part, types.ModuleType) and any(v is torch for v in vars(part).values()):
            return True
    return False


def resolve_adapter(backend, kind: str = "auto", device: str | None = None) -> Adapter:
    """The adapter for `backend`.

    kind="auto": the backend's own `to_backend` / `to_numpy` attributes where it defines
    them (either or both); otherwise torch tensors if the backend's modules use torch,
    else NumPy arrays passed through. Results always come back through `to_numpy` if
    defined, else `generic_to_numpy`. kind="numpy" or "torch" forces one; `device`
    (e.g. "cuda") puts the torch adapter's tensors on that device.
    """
    if kind not in ("auto", "numpy", "torch"):
        raise ValueError(f"adapter must be 'auto', 'numpy' or 'torch', got {kind!r}")
    if device is not None and kind == "numpy":
        raise ValueError("a device is meaningful only for the torch adapter")
    if kind == "torch" or device is not None:
        return _torch_adapter(device)
    if kind == "numpy":
        return Adapter("numpy", lambda a: a, generic_to_numpy)
    to_backend = getattr(backend, "to_backend", None)
    to_numpy = getattr(backend, "to_numpy", None)
    if callable(to_backend):
        back = to_numpy if callable(to_numpy) else generic_to_numpy
        return Adapter("backend's to_backend/to_numpy", to_backend, back)
    if _uses_torch(backend):
        return _torch_adapter()
    return Adapter("numpy", lambda a: a, to_numpy if callable(to_numpy) else generic_to_numpy)


def load_backend(spec):
    """A backend from "package.module", "package.module:attribute", a path to a .py
    file, or a module / object passed as is."""
    if not isinstance(spec, str):
        return spec
    if spec.endswith(".py"):
        return _load_file(spec)
    module_name, _, attribute = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if module_name.endswith(".py"):
        obj = _load_file(module_name)
    else:
        obj = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


def _load_file(path) -> types.ModuleType:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backend file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[path.stem] = module
    module_spec.loader.exec_module(module)
    return module
