"""Finding a Hugging Face model's transformer blocks and sizes, with no per-model table."""

from __future__ import annotations

import torch
from torch import nn

from minireft.config import ReftConfig

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
HIDDEN_SIZE_KEYS = ("hidden_size", "n_embd", "d_model", "dim")


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _config_int(model: nn.Module, keys) -> int | None:
    config = _text_config(model)
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _module_lists(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential))]


def _describe(lists) -> str:
    if not lists:
        return "none"
    return "; ".join(f"{name or '<root>'!r} ({len(m)} × {type(m[0]).__name__ if len(m) else '-'})"
                     for name, m in lists)


def _how_to_pass(model) -> str:
    return (f"pass the dotted path of the nn.ModuleList of transformer blocks: attach(model, config, "
            f"module_path='model.layers') or ReftConfig(..., module_path='model.layers'). "
            f"ModuleLists in this {type(model).__name__}: {_describe(_module_lists(model))}")


def find_blocks(model: nn.Module, module_path: str | None = None) -> tuple[str, nn.ModuleList]:
    """(path, blocks): the model's list of transformer blocks.

    With module_path: model.get_submodule(module_path). Without: the outermost nn.ModuleList
    whose length is the (text) config's num_hidden_layers / n_layer / num_layers; no table
    of architectures is involved.
    """
    if module_path is not None:
        try:
            blocks = model.get_submodule(module_path)
        except AttributeError:
            raise ValueError(f"module_path={module_path!r} names no submodule; {_how_to_pass(model)}") from None
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
            raise ValueError(f"module_path={module_path!r} is a {type(blocks).__name__}, not a non-empty "
                             f"nn.ModuleList of blocks; {_how_to_pass(model)}")
        return module_path, blocks
    n_layers = _config_int(model, LAYER_COUNT_KEYS)
    found = [(n, m) for n, m in _module_lists(model) if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    # A list nested inside another candidate (e.g. experts inside a block) is not the block list.
    outer = [(n, m) for n, m in found if not any(n.startswith(o + ".") for o, _ in found if o != n)]
    if len(outer) != 1:
        why = (f"the config gives no layer count ({'/'.join(LAYER_COUNT_KEYS)})" if n_layers is None else
               f"{len(outer)} nn.ModuleLists have the config's {n_layers} layers"
               + (f" ({_describe(outer)})" if outer else ""))
        raise ValueError(f"cannot find the transformer blocks of this {type(model).__name__}: {why}; "
                         f"{_how_to_pass(model)}")
    return outer[0]


def hidden_size_of(model: nn.Module) -> int:
    """d, the residual stream width: the (text) config's hidden_size, else the embedding width."""
    d = _config_int(model, HIDDEN_SIZE_KEYS)
    if d is None and hasattr(model, "get_input_embeddings"):
        d = model.get_input_embeddings().weight.shape[1]
    if d is None:
        raise ValueError(f"cannot tell the hidden size of this {type(model).__name__}: its config has none "
                         f"of {HIDDEN_SIZE_KEYS}")
    return int(d)


def _check_layers(config: ReftConfig, n_blocks: int, path: str) -> None:
    bad = [layer for layer in config.layers if layer >= n_blocks]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: {path!r} has {n_blocks} blocks, so valid layers are "
                         f"0..{n_blocks - 1}")


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


