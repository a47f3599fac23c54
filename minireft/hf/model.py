"""Attach ReFT interventions to any Hugging Face model: `attach(model, config) -> ReftModel`.

Where: the residual stream at the output of transformer block ℓ, for every ℓ in
config.layers (or, by config.component, the output of block ℓ's attention or MLP submodule:
minireft.hf.blocks.find_component). A forward hook on that module replaces its output hidden
state H (B, L, d) by

    H'[b, t] = Φ_g(H[b, t])   if t is an edited position of group g in row b
    H'[b, t] = H[b, t]        otherwise

Which positions: row b's real tokens are located from the attention mask (left or right
padding); with first real token f_b and prompt length n_b, the edited positions are
f_b + intervention_positions(n_b, p, s) (minireft.positions: the paper's "f{p}+l{s}" rule,
short prompts included). Tokens after the prompt (completions, generated tokens) are never
edited.

How, per forward call: the edited (row, column) pairs of each group, K_g of them, are
computed once (minireft.torch.edit.EditPlan, the mirror of the spec's minireft.edit); every
hooked block then does
    G_g = H[rows_g, cols_g]                                  (K_g, d)
    H'  = H with H'[rows_g, cols_g] = Φ_g(G_g) for each g     (one index_put into a copy)
No Python loop over rows, and the work beyond the one copy of H is proportional to the
edited positions.

Gradient checkpointing (ReftModel.gradient_checkpointing_enable): a checkpointed block
that reruns its forward in backward must see the same plan, or its recomputed output would
go unedited. Checkpointing goes through torch.utils.checkpoint (non-reentrant) with a
context_fn that captures the plan of the call being checkpointed and reinstates it for the
recomputation, so a hook that runs again (transformers versions that checkpoint
`__call__`, hooks included) edits the same positions with the same parameters; where the
hooks stay outside the checkpoint (transformers 5 checkpoints `forward`) the edit is not
recomputed at all. Checkpointing enabled any other way is refused in training.

Several adapters (add_adapter, load_adapter, set_adapter, delete_adapter): each named adapter
has its own config (layers, rank, positions, intervention may differ) and interventions;
one hook per hooked (layer, module) serves every adapter that edits it. A call with
adapter_names=[a_0, ..., a_{B−1}] (a_b an adapter's name, or None for the bare model) builds
one EditPlan per named adapter from the rows that name it, with its own config, and places
it in the batch (minireft.hf.edit_plan); the hook gathers every adapter's edited states, applies
each adapter's Φ to its own, and writes them all with one index_put. The plans hold disjoint
rows, and positions are per row, so every row gets exactly what it gets alone: this is
routing, not new math (the spec, minireft.edit, is the same for each row).

When: a forward pre-hook on the base model decides per call. A call whose input starts at
position 0 (no cached past) is a prefill and is edited; a call that continues a KV cache
(a decode step) runs untouched: the edit reaches it through the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import warnings
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from minireft import io
from minireft.config import ReftConfig
from minireft.hf.blocks import (
    check_layers,
    device_of,
    find_blocks,
    find_component,
    hidden_size_of,
)
from minireft.hf.prompt_format import PromptFormat, read_prompt_format, template_mismatch
from minireft.hf.edit_plan import Routing, apply_plans, place_plan
from minireft.torch.edit import EditPlan
from minireft.torch.modules import Intervention

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Base models that carry a ReftModel's hooks now: attaching twice would edit twice.
_ATTACHED: weakref.WeakSet = weakref.WeakSet()


def _past_length(kwargs: dict, length: int) -> int:
    """How many cached positions precede this call's input (0 for a prefill or no cache)."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.shape[1] - length
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
        return int(cache[0][0].shape[-2])  # legacy tuple cache: (B, heads, past, head_dim)
    position = kwargs.get("cache_position")
    return int(position[0]) if isinstance(position, torch.Tensor) and position.numel() else 0


def _input_shape(args, kwargs) -> tuple[int, int] | None:
    x = kwargs.get("input_ids", args[0] if args else None)
    if x is None:
        x = kwargs.get("inputs_embeds")
    return tuple(x.shape[:2]) if isinstance(x, torch.Tensor) and x.dim() >= 2 else None


def _replace_hidden(output, h):
    """The block's output with its hidden state replaced: a tensor, or element 0 of a tuple."""
    if isinstance(output, torch.Tensor):
        return h
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return type(output)((h, *output[1:]))
    raise TypeError(f"cannot edit a block that returns {type(output).__name__}; expected a tensor or a "
                    f"tuple whose first element is the hidden state")


def _hidden(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _counts_positions_itself(model: nn.Module) -> bool:
    """True for a decoder-only model whose forward takes position_ids: called without them
    (and without a cache) it numbers positions 0..L−1 whatever the padding, so left padding
    would shift a row's positions unless we count real tokens, as HF generate() does."""
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    can_generate = getattr(model, "can_generate", None)
    if can_generate is None or not can_generate():
        return False
    return "position_ids" in inspect.signature(model.forward).parameters


# ----------------------------------------------------------------------------- ReftModel

DEFAULT = "default"  # the name of the adapter that attach() and from_pretrained() create


class ReftModel(nn.Module):
    """A frozen Hugging Face model with ReFT interventions at the outputs of some blocks, in
    one or more named adapters, one of them active.

    model           the base model: every parameter requires_grad=False, weights never written
    adapters        nn.ModuleDict {name: nn.ModuleDict {str(layer): nn.ModuleDict {group:
                    Intervention}}}; the first is named "default"
    active_adapter  the adapter that forward/generate use when no adapter_names are given and
                    the only one whose parameters require grad (None once the last is deleted)
    config, interventions, prompt_format
                    the active adapter's; trainable parameters are named "{layer}.{group}.{param}"
                    by named_trainable_parameters()
    hidden_size     d

    Several adapters: add_adapter(name, config), load_adapter(path, name), set_adapter(name),
    delete_adapter(name); forward(..., adapter_names=[...]) and generate(..., adapter_names=[...])
    give row b adapter adapter_names[b] (None: the bare model), each row as if run alone.
    """

    def __init__(self, model: nn.Module, config: ReftConfig, *, seed: int = 0, module_path: str | None = None,
                 adapter_name: str = DEFAULT):
        super().__init__()
        if isinstance(model, ReftModel):
            raise TypeError("model is already a ReftModel; pass its base model (reft.model)")
        if model in _ATTACHED:
            raise ValueError("this model already has ReFT interventions attached; call detach() on the "
                             "ReftModel that holds it first")
        if module_path is not None:
            config = dataclasses.replace(config, module_path=module_path)
        self.model = model
        self.hidden_size = hidden_size_of(model)
        self.adapters = nn.ModuleDict()
        self._configs: dict[str, ReftConfig] = {}
        self._module_paths: dict[str, str] = {}
        self._prompt_formats: dict[str, PromptFormat | None] = {}
        self._frozen: dict[str, dict[str, bool]] = {}  # inactive adapters' requires_grad, to restore
        self._active: str | None = None
        self._hooks: dict[tuple, torch.utils.hooks.RemovableHandle] = {}  # (layer, module) -> its hook
        self._editors: dict[tuple, dict[str, nn.ModuleDict]] = {}  # (layer, module) -> {adapter: groups}
        self._plan_source: Routing | None = None  # the prompt batch of the current forward/generate
        self._plan: Routing | None = None  # the routing of the base-model call running now
        self._num_edits = 0  # block outputs edited so far (tests count prefill vs decode)
        self._fill_position_ids = _counts_positions_itself(model)  # a property of the model: decided once
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self._was_training = model.training
        self._detached = False
        self.add_adapter(adapter_name, config, seed=seed)  # validates before anything is changed
        model.requires_grad_(False)
        self._model_hook = model.register_forward_pre_hook(self._on_model_call, with_kwargs=True, prepend=True)
        _ATTACHED.add(model)

    # -- the active adapter

    @property
    def active_adapter(self) -> str | None:
        return self._active

    @property
    def config(self) -> ReftConfig | None:
        """The active adapter's ReftConfig (None when there is none)."""
        return self._configs.get(self._active)

    @property
    def interventions(self) -> nn.ModuleDict:
        """The active adapter's {str(layer): {group: Intervention}} (empty when there is none)."""
        return self.adapters[self._active] if self._active is not None else nn.ModuleDict()

    @property
    def module_path(self) -> str | None:
        """The dotted path of the blocks the active adapter edits."""
        return self._module_paths.get(self._active)

    @property
    def prompt_format(self) -> PromptFormat | None:
        """How the active adapter's training prompts were built: train() sets it, save_pretrained
        records it, from_pretrained and load_adapter read it back."""
        return self._prompt_formats.get(self._active)

    @prompt_format.setter
    def prompt_format(self, value: PromptFormat | None) -> None:
        self._prompt_formats[self._require_active()] = value

    @property
    def adapter_configs(self) -> dict[str, ReftConfig]:
        """{name: ReftConfig} of every adapter, in the order they were added."""
        return dict(self._configs)

    def _require_active(self) -> str:
        if self._active is None:
            raise ValueError("this ReftModel has no adapter left (the last was deleted); add one with "
                             "add_adapter(name, config) or load_adapter(path, name)")
        return self._active

    # -- adding, selecting, deleting adapters

    def add_adapter(self, name: str, config: ReftConfig, *, seed: int = 0) -> None:
        """Add adapter `name` with fresh interventions (init config.init, drawn from `seed`) and
        hook the blocks it edits. It becomes active only if there is no active adapter;
        otherwise its parameters are frozen until set_adapter(name)."""
        self._check_attached()
        self._check_new_name(name)
        if not isinstance(config, ReftConfig):
            raise TypeError(f"config must be a ReftConfig, got {type(config).__name__}")
        path, blocks = find_blocks(self.model, config.module_path)
        config.tensor_shapes(self.hidden_size)  # raises if rank > hidden size
        check_layers(config, len(blocks), path)
        self.adapters[name] = self._build_interventions(config, blocks, seed)
        self._configs[name] = config
        self._module_paths[name] = path
        self._prompt_formats[name] = None
        for key in self._targets(blocks, config):
            self._editors.setdefault(key, {})[name] = self.adapters[name][str(key[0])]
            if key not in self._hooks:
                self._hooks[key] = self._register_hook(key)
        if self._active is None:
            self._active = name
        else:
            self._freeze(name)

    def load_adapter(self, path, name: str, *, tokenizer=None) -> None:
        """add_adapter(name, saved config) with the saved parameters restored bit for bit and its
        prompt_format read back (as from_pretrained); the active adapter stays active."""
        config, params, fmt = _read_adapter(path, self.model, tokenizer)
        self.add_adapter(name, config)
        self._restore(name, params)
        self._prompt_formats[name] = fmt

    def set_adapter(self, name: str) -> None:
        """Make `name` the active adapter: forward/generate without adapter_names, config,
        interventions, prompt_format, training and saving use it; only its parameters require
        grad (the previously active one is frozen, and gets its flags back when reactivated)."""
        self._check_known([name])
        if name == self._active:
            return
        if self._active is not None:
            self._freeze(self._active)
        for param_name, p in self.adapters[name].named_parameters():
            p.requires_grad_(self._frozen[name][param_name])
        del self._frozen[name]
        self._active = name

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name` and the hooks of blocks no other adapter edits. The active adapter
        can be deleted only when it is the last one (the model then runs bare and has no active
        adapter); otherwise set_adapter(another) first."""
        self._check_known([name])
        if name == self._active and len(self._configs) > 1:
            others = [n for n in self._configs if n != name]
            raise ValueError(f"adapter {name!r} is active; call set_adapter(...) with one of {others} "
                             f"before deleting it (only the last adapter can be deleted while active)")
        for key in list(self._editors):
            self._editors[key].pop(name, None)
            if not self._editors[key]:
                del self._editors[key]
                self._hooks.pop(key).remove()
        del self.adapters[name]
        for table in (self._configs, self._module_paths, self._prompt_formats, self._frozen):
            table.pop(name, None)
        if name == self._active:
            self._active = None

    def _check_new_name(self, name) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"an adapter name must be a non-empty string without '.', got {name!r}")
        if name in self._configs:
            raise ValueError(f"an adapter named {name!r} exists already (adapters: {list(self._configs)}); "
                             f"delete_adapter({name!r}) first or choose another name")
        if hasattr(self.adapters, name):
            raise ValueError(f"adapter name {name!r} is reserved (an attribute of nn.ModuleDict); choose "
                             f"another name")

    def _check_known(self, names) -> None:
        for name in names:
            if name is not None and name not in self._configs:
                raise ValueError(f"no adapter named {name!r}; this model's adapters are {list(self._configs)} "
                                 f"(add_adapter(name, config) or load_adapter(path, name) adds one)")

    def _freeze(self, name: str) -> None:
        params = dict(self.adapters[name].named_parameters())
        self._frozen[name] = {param_name: p.requires_grad for param_name, p in params.items()}
        for p in params.values():
            p.requires_grad_(False)

    def _restore(self, name: str, params: dict) -> None:
        with torch.no_grad():
            for param_name, p in self.adapters[name].named_parameters():
                p.copy_(torch.from_numpy(params[param_name]))

    def _build_interventions(self, config: ReftConfig, blocks, seed: int) -> nn.ModuleDict:
        generator = torch.Generator().manual_seed(seed)  # CPU draw: same adapter on every device
        c = config
        return nn.ModuleDict({
            str(layer): nn.ModuleDict({
                group: Intervention(c.intervention, self.hidden_size, c.rank, init=c.init, dropout=c.dropout,
                                    dtype=DTYPES[c.dtype], device=device_of(blocks[layer]),
                                    generator=generator)
                for group in c.groups})
            for layer in c.layers})

    def _targets(self, blocks, config: ReftConfig) -> list[tuple[int, nn.Module]]:
        """[(layer, module)]: the module whose output each configured layer edits (the block, or
        its attention/MLP); one hook per (layer, module) serves every adapter that edits it."""
        return [(layer, find_component(blocks[layer], config.component)) for layer in config.layers]

    def _register_hook(self, key: tuple[int, nn.Module]):
        # prepend=True: the edit runs before any other hook on the block, so that HF's
        # output_hidden_states recorder (itself a forward hook) sees the edited state.
        return key[1].register_forward_hook(self._edit_hook(key), prepend=True)

    # -- hooks

    def _on_model_call(self, module, args, kwargs):
        """Pre-hook on the base model: choose this call's plan (None: run untouched)."""
        self._plan = None
        shape = _input_shape(args, kwargs)
        source = self._plan_source
        if source is None or shape is None or _past_length(kwargs, shape[1]) > 0:
            return
        batch = shape[0]
        if batch % source.batch:
            raise RuntimeError(f"the model was called with batch {batch}, not a multiple of the prompt "
                               f"batch {source.batch}")
        self._plan = source if batch == source.batch else source.expand(batch // source.batch)
        return

    def _edit_hook(self, key: tuple[int, nn.Module]):
        editors = self._editors[key]  # {adapter: its groups here}; add/delete_adapter update it in place

        def hook(module, args, output):
            routing = self._plan
            if routing is None:
                return None
            work = [(plan, editors[name]) for name, plan in routing.plans.items() if name in editors]
            if not work:
                return None
            self._num_edits += 1
            return _replace_hidden(output, apply_plans(_hidden(output), work))

        return hook

    # -- running

    def _check_attached(self) -> None:
        if self._detached:
            raise RuntimeError("this ReftModel was detached; attach the model again")

    def _check_checkpointing(self) -> None:
        # Checkpointed blocks recompute during backward, after the edit plan is gone: unless
        # the checkpoint reinstates it (ours does), recomputed outputs would be unedited.
        foreign = [m for m in self.model.modules() if getattr(m, "gradient_checkpointing", False) is True
                   and not self._is_our_checkpoint(getattr(m, "_gradient_checkpointing_func", None))]
        if self.training and torch.is_grad_enabled() and foreign:
            raise NotImplementedError(
                "gradient checkpointing was enabled on the base model directly: its recomputed blocks "
                "would not be edited; call reft_model.gradient_checkpointing_enable() instead (or "
                "train(..., gradient_checkpointing=True)), or model.gradient_checkpointing_disable()")

    def gradient_checkpointing_enable(self) -> None:
        """Checkpoint the base model's blocks (non-reentrant torch.utils.checkpoint) so that a
        recomputed block is edited exactly as in the first pass (module docstring). As in
        Hugging Face, a block checkpoints only while its own `training` flag is set (train()
        sets it on the blocks alone, leaving their dropout off)."""
        kwargs = {"use_reentrant": False, "context_fn": self._checkpoint_contexts}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers v5
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif hasattr(self.model, "gradient_checkpointing_enable"):
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            raise ValueError(f"{type(self.model).__name__} has no gradient checkpointing "
                             "(no gradient_checkpointing_enable)")

    def gradient_checkpointing_disable(self) -> None:
        if hasattr(self.model, "activation_checkpointing_disable"):  # transformers v5
            self.model.activation_checkpointing_disable()
        else:
            self.model.gradient_checkpointing_disable()

    def _is_our_checkpoint(self, func) -> bool:
        return getattr(func, "keywords", {}).get("context_fn") == self._checkpoint_contexts

    def _checkpoint_contexts(self):
        """torch.utils.checkpoint's context_fn: (forward context, recompute context); the
        recompute runs with the plan of the call being checkpointed now."""
        return contextlib.nullcontext(), self._with_plan(self._plan)

    @contextlib.contextmanager
    def _with_plan(self, plan: EditPlan | None):
        saved, self._plan = self._plan, plan
        try:
            yield
        finally:
            self._plan = saved

    def forward(self, input_ids=None, attention_mask=None, *, prompt_lengths=None, edit_plan=None,
                adapter_names=None, **model_kwargs):
        """The base model's output with the edit. input_ids, attention_mask: (B, L).

        prompt_lengths (B,): real prompt tokens per row (default attention_mask.sum(1)); positions
        after the prompt are never edited. Other kwargs (labels, position_ids, ...) pass through.
        With left padding, decoder-only models need position_ids counting real tokens
        ((mask.cumsum(-1) − 1).clamp(min=0)) for a row's logits not to depend on its padding;
        for decoder-only models whose forward takes position_ids, they are filled in so when not
        given (as generate() does), so a row's result is the same alone or padded on either side.
        adapter_names: B entries, each an adapter's name or None (that row runs the bare model);
        default: every row uses the active adapter.
        edit_plan: this batch's EditPlan for the active adapter, made ahead (train() builds it
        from the host copy of the mask, so checking the mask reads no device memory); default:
        built from attention_mask.
        An input of no tokens (B, 0) is refused with a one-line ValueError naming it (the bare
        model fails inside attention; an empty prompt has no position to edit).
        """
        self._check_attached()
        self._check_checkpointing()
        x = input_ids if input_ids is not None else model_kwargs.get("inputs_embeds")
        if x is None:
            raise ValueError("pass input_ids (B, L) or inputs_embeds (B, L, d)")
        if x.dim() >= 2 and x.shape[1] == 0:
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(f"{name} has no tokens (shape {tuple(x.shape)}): an empty prompt has no "
                             f"position to edit; give every row at least one token")
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        if edit_plan is not None and (edit_plan.batch, edit_plan.length) != tuple(attention_mask.shape):
            raise ValueError(f"edit_plan is for a batch of {edit_plan.batch} x {edit_plan.length}, but "
                             f"attention_mask is {tuple(attention_mask.shape)}")
        self._plan_source = self._routing(attention_mask, prompt_lengths, adapter_names, edit_plan)
        if (self._fill_position_ids and "position_ids" not in model_kwargs
                and model_kwargs.get("past_key_values") is None):
            model_kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        try:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **model_kwargs)
        finally:
            self._plan_source = self._plan = None

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, *, adapter_names=None, **generate_kwargs):
        """The base model's generate(); the whole input is the prompt.

        The prefill (the call that starts at position 0) is edited; decode steps that continue
        the KV cache are not. Greedy, sampling and beam search (rows expanded by
        repeat_interleave, as HF does) work; attention_mask defaults to all ones.
        adapter_names: as in forward (one name or None per prompt; default: the active adapter).
        """
        self._check_attached()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._plan_source = self._routing(attention_mask, None, adapter_names)
        try:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        finally:
            self._plan_source = self._plan = None

    def _routing(self, mask, prompt_lengths, adapter_names, edit_plan=None) -> Routing | None:
        """Which adapter edits which rows of a (B, L) batch: one EditPlan per named adapter, built
        on the rows that name it (minireft.hf.edit_plan.place_plan); None when no row is edited."""
        batch = mask.shape[0] if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        if adapter_names is None:
            if self._active is None:
                if edit_plan is not None:
                    self._require_active()
                return None
            plan = edit_plan if edit_plan is not None else EditPlan.from_mask(mask, prompt_lengths, self.config)
            return Routing({self._active: plan}, plan.batch)
        if edit_plan is not None:
            raise ValueError("edit_plan is the active adapter's plan; with adapter_names, leave edit_plan "
                             "None (each adapter's plan is built from attention_mask)")
        names = self._check_adapter_names(adapter_names, batch)
        if prompt_lengths is not None:
            prompt_lengths = torch.as_tensor(prompt_lengths, device=mask.device)
        plans = {}
        for name in dict.fromkeys(n for n in names if n is not None):
            rows = [b for b, n in enumerate(names) if n == name]
            index = torch.tensor(rows, device=mask.device)
            lengths = None if prompt_lengths is None else _rows_of(prompt_lengths, index, batch)
            try:
                plan = EditPlan.from_mask(mask[index], lengths, self._configs[name])
            except ValueError as e:
                raise ValueError(f"{e} (row numbers count the rows that name adapter {name!r}: batch rows "
                                 f"{rows})") from None
            plans[name] = place_plan(plan, index, batch)
        return Routing(plans, batch) if plans else None

    def _check_adapter_names(self, adapter_names, batch: int | None) -> list:
        if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)):
            raise TypeError(f"adapter_names must be a list with one adapter name (or None) per row, got "
                             f"{adapter_names!r}")
        if batch is None:
            raise ValueError("attention_mask must be a (batch, length) tensor of 0/1")
        if len(adapter_names) != batch:
            raise ValueError(f"adapter_names has {len(adapter_names)} entries, but the batch has {batch} "
                             f"rows; give one adapter name (or None for the bare model) per row")
        self._check_known(adapter_names)
        return list(adapter_names)

    # -- parameters

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """("{layer}.{group}.{param}", parameter): the active adapter's tensors, named as in the file."""
        for name, p in self.interventions.named_parameters():
            if p.requires_grad:
                yield name, p

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for _, p in self.named_trainable_parameters())

    def adapter_state(self, adapter_name: str | None = None) -> dict:
        """{"{layer}.{group}.{param}": np.ndarray}: an adapter's parameters (default: the active
        one's) as minireft.io stores them."""
        name = self._saved_name(adapter_name)
        return {k: p.detach().cpu().numpy().copy() for k, p in self.adapters[name].named_parameters()}

    def _saved_name(self, adapter_name: str | None) -> str:
        if adapter_name is None:
            return self._require_active()
        self._check_known([adapter_name])
        return adapter_name

    # -- detach, save, load

    def detach(self) -> nn.Module:
        """Remove every hook (every adapter's), restore requires_grad and train/eval mode; return
        the base model."""
        for handle in [*self._hooks.values(), self._model_hook]:
            handle.remove()
        self._hooks.clear()
        self._detached = True
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, p.requires_grad))
        self.model.train(self._was_training)
        _ATTACHED.discard(self.model)
        return self.model

    def _base_model_name(self) -> str | None:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", None) or getattr(
            self.model, "name_or_path", None)
        return str(name) if name else None

    def save_pretrained(self, path, *, extra_files: dict[str, bytes] | None = None,
                        prompt_format: PromptFormat | None = None, adapter_name: str | None = None):
        """Write one adapter's folder (default: the active adapter; reft_config.json +
        reft_model.safetensors, and any extra_files {name: bytes}) atomically. reft_config.json
        records `prompt_format` (default: that adapter's, which train() sets; omitted when unknown)."""
        name = self._saved_name(adapter_name)
        fmt = prompt_format if prompt_format is not None else self._prompt_formats[name]
        return io.save_adapter(path, self._configs[name], self.adapter_state(name),
                               base_model=self._base_model_name(), extra_files=extra_files,
                               prompt_format=fmt.to_dict() if fmt else None)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path, *, module_path: str | None = None,
                        tokenizer=None, adapter_name: str = DEFAULT) -> ReftModel:
        """attach(model, saved config) with the saved parameters restored bit for bit, and
        prompt_format set from the adapter (minireft.hf.prompt_format.read_prompt_format; None
        when unknown), as adapter `adapter_name`. With `tokenizer`, warns (UserWarning, one line)
        when the adapter was trained with a chat template that this tokenizer does not have."""
        config, params, fmt = _read_adapter(path, model, tokenizer)
        reft = cls(model, config, module_path=module_path, adapter_name=adapter_name)
        reft._restore(adapter_name, params)
        reft.prompt_format = fmt
        return reft


def _read_adapter(path, model: nn.Module, tokenizer) -> tuple[ReftConfig, dict, PromptFormat | None]:
    """(config, params, prompt_format) of the adapter folder at `path`, checked against the
    model's hidden size; warns (stacklevel: the caller's caller) on a chat-template mismatch."""
    config, params = io.load_adapter(path)
    saved_d = int(io.read_meta(path)["hidden_size"])
    d = hidden_size_of(model)
    if saved_d != d:
        raise ValueError(f"the adapter at {path} was trained for hidden size {saved_d}, but this "
                         f"{type(model).__name__} has hidden size {d}")
    fmt = read_prompt_format(path)
    mismatch = template_mismatch(fmt, tokenizer) if tokenizer is not None else None
    if mismatch:
        warnings.warn(mismatch, UserWarning, stacklevel=3)
    return config, params, fmt


def _rows_of(prompt_lengths: torch.Tensor, index: torch.Tensor, batch: int) -> torch.Tensor:
    if prompt_lengths.shape != (batch,):
        raise ValueError(f"prompt_lengths must be an integer tensor of shape ({batch},) (one length per row), "
                         f"got shape {tuple(prompt_lengths.shape)}")
    return prompt_lengths[index]


def attach(model: nn.Module, config: ReftConfig, *, seed: int = 0, module_path: str | None = None) -> ReftModel:
    """Freeze `model` and edit the output of blocks config.layers with fresh interventions
    (init config.init, drawn from `seed`), as adapter "default". module_path overrides
    config.module_path. More adapters: ReftModel.add_adapter / load_adapter."""
    return ReftModel(model, config, seed=seed, module_path=module_path)
