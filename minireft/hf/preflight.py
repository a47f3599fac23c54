"""Checks that run before a model's weights load, from its config file alone, so that a bad
--layers, --rank or --adapter costs a second rather than a model load.

    model_dims(name_or_path) -> (n, d) | None     n blocks, hidden size d
    check_fits(config, dims, model)                rank <= d, every layer < n
    check_adapter(path, dims, model) -> meta       the folder is an adapter that fits

A GGUF file (the packaged SmolLM2 before its first conversion, or any other) is read for
its header's key-values only ("{arch}.block_count", "{arch}.embedding_length"), which come
before the tensors. Where there is nothing to read, model_dims returns None and the same
checks happen when the adapter is attached, after the load.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from minireft import io
from minireft.config import ReftConfig
from minireft.hf.blocks import HIDDEN_SIZE_KEYS, LAYER_COUNT_KEYS


def _first_int(config, keys) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _smollm2_config_file() -> Path | None:
    """config.json of the converted SmolLM2 copy in the cache, when it was converted already."""
    from minireft.hf.packaged import SMOLLM2_CACHE_NAME
    from minireft.hf.loading import default_cache_dir

    path = default_cache_dir() / SMOLLM2_CACHE_NAME / "config.json"
    return path if path.is_file() else None


def model_dims(name_or_path) -> tuple[int, int] | None:
    """(number of blocks n, hidden size d) read from the model's config without its weights:
    a local folder or a cached hub name (transformers.AutoConfig, offline), a GGUF file or a
    folder holding one (its header), or the packaged SmolLM2 (its converted copy's config, or
    its GGUF's header). None when there is no such config to read."""
    from minireft.hf.packaged import SMOLLM2_ALIASES

    name = os.fspath(name_or_path)
    if name.lower() in SMOLLM2_ALIASES:
        source = _smollm2_config_file()
        if source is None:
            return _packaged_gguf_dims()
        name = str(source.parent)
    path = Path(name).expanduser()
    gguf = _gguf_file(path)
    if gguf is not None:
        return gguf_dims(gguf)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path) if path.is_dir() else name, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    getter = getattr(config, "get_text_config", None)
    config = getter() if callable(getter) else config
    n, d = _first_int(config, LAYER_COUNT_KEYS), _first_int(config, HIDDEN_SIZE_KEYS)
    return (n, d) if n and d else None


def _gguf_file(path: Path) -> Path | None:
    """The GGUF file that load_model would read for `path`, else None."""
    from minireft.hf.loading import gguf_file_of

    try:
        return gguf_file_of(path)
    except (OSError, ValueError):  # several GGUF files: load_model names them
        return None


def _packaged_gguf_dims() -> tuple[int, int] | None:
    from minireft.hf.packaged import MissingPackageError, smollm2_gguf_path

    try:
        return gguf_dims(smollm2_gguf_path())
    except MissingPackageError:
        return None


# GGUF metadata value types (the format's spec): fixed-size scalars by struct code; 8 is a
# string (u64 length, then UTF-8 bytes), 9 an array (u32 item type, u64 count, the items).
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_dims(path) -> tuple[int, int] | None:
    """(n, d) = ("{arch}.block_count", "{arch}.embedding_length") from a GGUF file's header,
    arch = "general.architecture"; the key-values are read in order until both are found,
    and the tensors are never touched. None for a file that is not GGUF v2/v3 or lacks them."""
    try:
        with open(path, "rb") as fh:
            return _read_gguf_dims(fh)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None


def _read_gguf_dims(fh) -> tuple[int, int] | None:
    def unpack(fmt):
        size = struct.calcsize("<" + fmt)
        data = fh.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack("<" + fmt, data)[0]

    def string() -> str:
        return fh.read(unpack("Q")).decode("utf-8")

    def value(kind: int):
        if kind in _GGUF_SCALARS:
            return unpack(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return string()
        if kind == _GGUF_ARRAY:
            item, count = unpack("I"), unpack("Q")
            if item in _GGUF_SCALARS:  # skipped, not parsed: a vocabulary has ~50k entries
                fh.seek(count * struct.calcsize("<" + _GGUF_SCALARS[item]), os.SEEK_CUR)
            else:
                for _ in range(count):
                    value(item)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")

    from minireft.hf.loading import GGUF_MAGIC

    if fh.read(4) != GGUF_MAGIC or unpack("I") not in (2, 3):
        return None
    unpack("Q")  # tensor count
    found: dict[str, object] = {}
    for _ in range(unpack("Q")):
        key = string()
        found[key] = value(unpack("I"))
        arch = found.get("general.architecture")
        n, d = found.get(f"{arch}.block_count"), found.get(f"{arch}.embedding_length")
        if isinstance(n, int) and isinstance(d, int) and n > 0 and d > 0:
            return n, d
    return None


def check_fits(config: ReftConfig, dims: tuple[int, int] | None, model: str, what: str = "--layers") -> None:
    """ValueError when config.rank > d or a layer is not in 0..n−1 (dims None: nothing to check)."""
    if dims is None:
        return
    n, d = dims
    if config.rank > d:
        raise ValueError(f"rank {config.rank} is greater than the hidden size {d} of {model}; "
                         f"choose a rank <= {d}")
    outside = [layer for layer in config.layers if layer >= n]
    if outside:
        raise ValueError(f"{what} {outside} out of range: {model} has {n} blocks, 0..{n - 1}")


def check_adapter(path, dims: tuple[int, int] | None, model: str) -> dict:
    """The adapter folder's reft_config.json (minireft.io.read_meta: FileNotFoundError naming
    the folder when it is missing), checked against the model's dims; returns the metadata."""
    meta = io.read_meta(path)
    if dims is not None and int(meta["hidden_size"]) != dims[1]:
        raise ValueError(f"the adapter at {path} was trained for hidden size {meta['hidden_size']}, "
                         f"but {model} has hidden size {dims[1]}")
    config = ReftConfig.from_dict({k: v for k, v in meta.items() if k not in io.META_FIELDS})
    check_fits(config, dims, model, what=f"the adapter's layers (at {path})")
    return meta
