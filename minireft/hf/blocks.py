"""Finding a Hugging Face model's transformer blocks, the submodule of a block whose output is
edited, and sizes, with no per-model table."""

from __future__ import annotations

import torch
from torch import nn

from minireft.config import COMPONENTS, ReftConfig

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


# How a block's attention and MLP children are recognised, by class name or attribute name.
# Substrings of the class name are matched case-sensitively, so that a norm named after the
# sublayer it precedes (post_attention_layernorm: an RMSNorm) is not taken for it.
_SUBLAYERS = {
    "attention_output": (("Attention",), ("attn", "self_attn", "attention", "self_attention")),
    "mlp_output": (("MLP", "FeedForward", "FFN"), ("mlp", "feed_forward", "ffn")),
}


def find_component(block: nn.Module, component: str) -> nn.Module:
    """The submodule of `block` whose output hidden state (B, L, d) a ReFT edit replaces.

    "block_output": the block itself (its output is the residual stream).
    "attention_output" / "mlp_output": the block's one direct child whose class name contains
    "Attention" / "MLP", "FeedForward" or "FFN", or whose attribute name is attn, self_attn,
    attention or self_attention / mlp, feed_forward or ffn; no table of architectures. In a
    pre-norm block (GPT-2, Llama, Qwen2, Mistral, Gemma 3) that is the sublayer's contribution
    before it is added to the residual stream (Gemma 3: before its post-norm). In a post-norm
    block (BERT, RoBERTa) the attention child ends with its own residual add and LayerNorm, so
    "attention_output" is the residual stream between the two sublayers; such a block has no
    MLP child (its feed-forward is `intermediate` + `output`, which ends the block), so
    "mlp_output" is refused: "block_output" edits the same state, "output.dense" the MLP's own
    output.
    Anything else: a dotted path inside the block (block.get_submodule(component)).
    """
    if component == "block_output":
        return block
    if component in _SUBLAYERS:
        class_parts, names = _SUBLAYERS[component]
        found = [(name, child) for name, child in block.named_children()
                 if name in names or any(part in type(child).__name__ for part in class_parts)]
        if len(found) == 1:
            return found[0][1]
        why = ("no child of it is one" if not found else
               f"{len(found)} of its children could be: {[name for name, _ in found]}")
        raise ValueError(f"cannot find the {component.split('_')[0]} submodule of this {type(block).__name__} "
                         f"for component={component!r}: {why}{_post_norm_note(block, component)}; "
                         f"{_how_to_name(block)}")
    try:
        return block.get_submodule(component)
    except AttributeError:
        raise ValueError(f"component={component!r} is not one of {list(COMPONENTS)} and names no submodule of "
                         f"this {type(block).__name__}; {_how_to_name(block)}") from None


def _post_norm_note(block: nn.Module, component: str) -> str:
    children = dict(block.named_children())
    if component != "mlp_output" or "intermediate" not in children or "output" not in children:
        return ""
    return (" (a post-norm block: its feed-forward is `intermediate` then `output`, which ends with the "
            "residual add and LayerNorm, so its output is the block's: component='block_output' edits "
            "it, component='output.dense' the feed-forward's own output before them)")


def _how_to_name(block: nn.Module) -> str:
    inside = ", ".join(f"{name} ({type(m).__name__})" for name, m in block.named_modules()
                       if name and name.count(".") < 2)
    return (f"pass the dotted path, inside the block, of the submodule whose output to edit "
            f"(ReftConfig(..., component='mlp.down_proj')), or component='block_output'. Submodules "
            f"of this {type(block).__name__}: {inside or 'none'}")


def hidden_size_of(model: nn.Module) -> int:
    """d, the residual stream width: the (text) config's hidden_size, else the embedding width."""
    d = _config_int(model, HIDDEN_SIZE_KEYS)
    if d is None and hasattr(model, "get_input_embeddings"):
        d = model.get_input_embeddings().weight.shape[1]
    if d is None:
        raise ValueError(f"cannot tell the hidden size of this {type(model).__name__}: its config has none "
                         f"of {HIDDEN_SIZE_KEYS}")
    return int(d)


def check_layers(config: ReftConfig, n_blocks: int, path: str) -> None:
    """Refuse a config whose layers are not all in 0..n_blocks − 1 (path names the blocks)."""
    bad = [layer for layer in config.layers if layer >= n_blocks]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: {path!r} has {n_blocks} blocks, so valid layers are "
                         f"0..{n_blocks - 1}")


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (or buffer); CPU for a module with neither."""
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


