"""Adapters on disk, with NumPy and safetensors alone (no pickle, no torch).

An adapter is a folder:
    reft_config.json         every ReftConfig field, plus hidden_size, base_model,
                             minireft_version and spec_version
    reft_model.safetensors   one tensor per "{layer}.{group}.{param}"

Writes are atomic: the folder is built under a temporary name beside the target
and renamed into place, so a failure never leaves a half-written adapter and
never damages the one already there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from minireft import _check
from minireft.config import ReftConfig
from minireft.stiefel import orthonormality_error
from minireft.version import SPEC_VERSION, __version__

CONFIG_FILE = "reft_config.json"
WEIGHTS_FILE = "reft_model.safetensors"
# prompt_format (optional): how the training prompts were built (minireft.hf.prompt_format)
META_FIELDS = ("hidden_size", "base_model", "minireft_version", "spec_version", "prompt_format")
# Largest max|RRᵀ − I| accepted when saving or loading; the after-training bounds of the
# tolerance policy (reference/SPEC.md) are 1e-12 (float64) and 1e-5 (float32), so these
# leave margin without accepting a non-orthonormal R.
ORTHONORMALITY_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


class AdapterError(ValueError):
    """An adapter file is missing, malformed, or disagrees with its config."""


def check_params(config: ReftConfig, params: dict, hidden_size: int | None = None) -> int:
    """Check names, shapes, dtype, finiteness and orthonormality of R; return hidden_size."""
    if hidden_size is None:
        matrices = [v for k, v in params.items() if not k.endswith(".b") and getattr(v, "ndim", 0) == 2]
        if not matrices:
            raise AdapterError(f"cannot infer the hidden size: params has no (r, d) matrix; got {sorted(params)}")
        hidden_size = matrices[0].shape[1]
    expected = config.tensor_shapes(hidden_size)
    missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
    if missing or extra:
        raise AdapterError(
            f"tensor names disagree with the config: missing {missing}, unexpected {extra}; "
            f"expected exactly {sorted(expected)}"
        )
    want_dtype = np.dtype(config.dtype)
    for name, shape in expected.items():
        value = _check.array(name, params[name])
        if value.dtype != want_dtype:
            raise AdapterError(f"tensor {name} has dtype {value.dtype}, but config.dtype is {config.dtype}")
        if value.shape != shape:
            raise AdapterError(
                f"tensor {name} has shape {value.shape}, but the config (rank={config.rank}) "
                f"and hidden size {hidden_size} give {shape}"
            )
        _check.finite(name, value)
        if name.endswith(".R"):
            error = orthonormality_error(value)
            if error > ORTHONORMALITY_TOL[value.dtype]:
                raise AdapterError(
                    f"tensor {name} is not orthonormal: max|RRᵀ − I| = {error:.3e} > "
                    f"{ORTHONORMALITY_TOL[value.dtype]:.0e}; R must have orthonormal rows (shape (r, d))"
                )
    return hidden_size


def save_adapter(path, config: ReftConfig, params: dict, *, base_model: str | None = None,
                 extra_files: dict[str, bytes] | None = None, prompt_format: dict | None = None) -> Path:
    """Write the adapter folder `path` atomically; replace an existing adapter there.

    extra_files: {file name: bytes} written into the same folder inside the same atomic
    swap (a classification head, say), so the folder is never seen without them.
    prompt_format: a JSON-able dict stored as reft_config.json's "prompt_format" (omitted when None).
    """
    path = Path(path)
    hidden_size = check_params(config, params)
    extra_files = dict(extra_files or {})
    for name, data in extra_files.items():
        if name in (CONFIG_FILE, WEIGHTS_FILE) or Path(name).name != name or name.startswith("."):
            raise ValueError(f"extra_files name {name!r} must be a plain file name other than "
                             f"{CONFIG_FILE} and {WEIGHTS_FILE}")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"extra_files[{name!r}] must be bytes, got {type(data).__name__}")
    not_adapter = path.exists() and not (path / CONFIG_FILE).is_file()
    if not_adapter and (path.is_file() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an adapter folder; choose another path")
    meta = config.to_dict() | {
        "hidden_size": hidden_size,
        "base_model": base_model,
        "minireft_version": __version__,
        "spec_version": SPEC_VERSION,
    }
    if prompt_format is not None:
        meta["prompt_format"] = prompt_format
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        tensors = {k: np.ascontiguousarray(params[k]) for k in sorted(params)}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"spec_version": SPEC_VERSION})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
        file_mode, folder_mode = umask_modes()
        for f in (WEIGHTS_FILE, CONFIG_FILE, *extra_files):
            (tmp / f).chmod(file_mode)  # the safetensors writer makes owner-only files
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(folder_mode)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def umask_modes() -> tuple[int, int]:
    """(0o666 & ~umask, 0o777 & ~umask): the modes open() and mkdir() give a new file and
    folder, so that an adapter's files are as readable as any other file the user writes."""
    mask = os.umask(0o022)  # the only portable way to read it is to set it, then restore it
    os.umask(mask)
    return 0o666 & ~mask, 0o777 & ~mask


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename tmp to path; an old adapter at path is moved aside first and removed last."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def is_adapter(path) -> bool:
    """True when `path` is a folder with a reft_config.json."""
    return (Path(path) / CONFIG_FILE).is_file()


def check_output(path, *, overwrite: bool = False) -> None:
    """Refuse, before any work, an output folder that a run must not replace: a file or a
    non-empty folder that is not an adapter (always), an adapter (unless overwrite)."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not is_adapter(path)):
        raise FileExistsError(f"{path} exists and is not an adapter folder; choose a new folder")
    if is_adapter(path) and not overwrite:
        raise FileExistsError(f"{path} already holds an adapter; replace it with --overwrite "
                              f"(overwrite=True in Python) or choose another folder")


def staging_dir(path) -> Path:
    """A fresh empty folder <name>.tmp-<hex> beside `path` (the same filesystem, so that
    `publish` is one rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f"{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def publish(staging, path) -> Path:
    """Move the finished folder `staging` to `path`: its files are synced, then one rename
    (an adapter already at `path` is moved aside first and removed last)."""
    staging, path = Path(staging), Path(path)
    for f in staging.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _swap_in(staging, path)
    return path


def keep_partial(staging, path) -> Path:
    """Rename `staging` to <name>.partial-<UTC YYYYmmdd-HHMMSS>[-k] beside `path`; return it."""
    staging, path = Path(staging), Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = path.parent / f"{path.name}.partial-{stamp}"
    k = 1
    while target.exists():
        k += 1
        target = path.parent / f"{path.name}.partial-{stamp}-{k}"
    os.replace(staging, target)
    return target


def read_meta(path) -> dict:
    """The parsed reft_config.json of the adapter at `path`, version-checked."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"no adapter folder at {path}")
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}; is it an adapter folder written by save_adapter?")
    try:
        meta = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{config_file} is not valid JSON: {e}") from None
    got = meta.get("spec_version")
    if not isinstance(got, str) or got.split(".")[0] != SPEC_VERSION.split(".")[0] or _newer(got, SPEC_VERSION):
        raise AdapterError(
            f"{config_file} has spec_version {got!r}; this minireft reads spec {SPEC_VERSION} "
            f"(same major version, not newer): upgrade minireft or re-save the adapter"
        )
    for key in ("hidden_size",):
        if key not in meta:
            raise AdapterError(f"{config_file} has no {key!r} field")
    return meta


def _newer(version: str, ours: str) -> bool:
    try:
        return tuple(int(x) for x in version.split(".")) > tuple(int(x) for x in ours.split("."))
    except ValueError:
        return True


def load_adapter(path) -> tuple[ReftConfig, dict]:
    """Read the adapter folder `path`: (ReftConfig, {"{layer}.{group}.{param}": ndarray})."""
    path = Path(path)
    meta = read_meta(path)
    config = ReftConfig.from_dict({k: v for k, v in meta.items() if k not in META_FIELDS})
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE}")
    try:
        params = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{weights} cannot be read (truncated or corrupt?): {e}") from None
    check_params(config, params, hidden_size=int(meta["hidden_size"]))
    return config, params
