"""Checks that run before a model's weights load, from its config file alone, so that a bad
--layers, --rank or --adapter costs a second rather than a model load.

    model_dims(name_or_path) -> (n, d) | None     n blocks, hidden size d
    check_fits(config, dims, model)                rank <= d, every layer < n
    check_adapter(path, dims, model) -> meta       the folder is an adapter that fits

Where the config cannot be read without the weights (a GGUF file, the packaged SmolLM2
before its first conversion), model_dims returns None and the same checks happen when the
adapter is attached, after the load.
"""

from __future__ import annotations

import json
import os
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
    from minireft.demo.packaged import SMOLLM2_CACHE_NAME
    from minireft.hf.loading import default_cache_dir

    path = default_cache_dir() / SMOLLM2_CACHE_NAME / "config.json"
    return path if path.is_file() else None


def model_dims(name_or_path) -> tuple[int, int] | None:
    """(number of blocks n, hidden size d) read from the model's config without its weights:
    a local folder or a cached hub name (transformers.AutoConfig, offline), or the packaged
    SmolLM2's converted copy. None when there is no such config to read."""
    from minireft.demo.packaged import SMOLLM2_ALIASES

    name = os.fspath(name_or_path)
    if name.lower() in SMOLLM2_ALIASES:
        source = _smollm2_config_file()
        if source is None:
            return None
        name = str(source.parent)
    elif name.endswith(".gguf"):
        return None
    from transformers import AutoConfig

    path = Path(name).expanduser()
    try:
        config = AutoConfig.from_pretrained(str(path) if path.is_dir() else name, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    getter = getattr(config, "get_text_config", None)
    config = getter() if callable(getter) else config
    n, d = _first_int(config, LAYER_COUNT_KEYS), _first_int(config, HIDDEN_SIZE_KEYS)
    return (n, d) if n and d else None


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
