"""Attach ReFT interventions to any Hugging Face model: `attach(model, config) -> ReftModel`.

Where: the residual stream at the output of transformer block ℓ, for every ℓ in
config.layers. A forward hook on block ℓ replaces its output hidden state H (B, L, d) by

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
from minireft.hf.blocks import _check_layers, _device_of, find_blocks, hidden_size_of
from minireft.hf.prompt_format import PromptFormat, read_prompt_format, template_mismatch
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


class ReftModel(nn.Module):
    """A frozen Hugging Face model with ReFT interventions at the outputs of some blocks.

    model          the base model: every parameter requires_grad=False, weights never written
    config         the ReftConfig
    interventions  nn.ModuleDict {str(layer): nn.ModuleDict {group: Intervention}}; trainable
                   parameters are named "{layer}.{group}.{param}" by named_trainable_parameters()
    hidden_size    d
    """

    def __init__(self, model: nn.Module, config: ReftConfig, *, seed: int = 0, module_path: str | None = None):
        super().__init__()
        if isinstance(model, ReftModel):
            raise TypeError("model is already a ReftModel; pass its base model (reft.model)")
        if model in _ATTACHED:
            raise ValueError("this model already has ReFT interventions attached; call detach() on the "
                             "ReftModel that holds it first")
        if module_path is not None:
            config = dataclasses.replace(config, module_path=module_path)
        path, blocks = find_blocks(model, config.module_path)
        self.hidden_size = hidden_size_of(model)
        config.tensor_shapes(self.hidden_size)  # raises if rank > hidden size
        _check_layers(config, len(blocks), path)
        self.model = model
        self.config = config
        self.module_path = path
        self.interventions = self._build_interventions(blocks, seed)
        self._plan_source: EditPlan | None = None  # the prompt batch of the current forward/generate
        self._plan: EditPlan | None = None  # the plan of the base-model call running now
        self._num_edits = 0  # block outputs edited so far (tests count prefill vs decode)
        self._fill_position_ids = _counts_positions_itself(model)  # a property of the model: decided once
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self._was_training = model.training
        model.requires_grad_(False)
        self._handles = self._register_hooks(blocks)
        _ATTACHED.add(model)

    def _build_interventions(self, blocks, seed: int) -> nn.ModuleDict:
        generator = torch.Generator().manual_seed(seed)  # CPU draw: same adapter on every device
        c = self.config
        return nn.ModuleDict({
            str(layer): nn.ModuleDict({
                group: Intervention(c.intervention, self.hidden_size, c.rank, init=c.init, dropout=c.dropout,
                                    dtype=DTYPES[c.dtype], device=_device_of(blocks[layer]),
                                    generator=generator)
                for group in c.groups})
            for layer in c.layers})

    def _register_hooks(self, blocks) -> list:
        # prepend=True: the edit runs before any other hook on the block, so that HF's
        # output_hidden_states recorder (itself a forward hook) sees the edited state.
        handles = [self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True, prepend=True)]
        for layer in self.config.layers:
            handles.append(blocks[layer].register_forward_hook(self._edit_hook(layer), prepend=True))
        return handles

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

    def _edit_hook(self, layer: int):
        interventions = self.interventions[str(layer)]

        def hook(module, args, output):
            plan = self._plan
            if plan is None:
                return None
            self._num_edits += 1
            return _replace_hidden(output, plan.apply(_hidden(output), interventions))

        return hook

    # -- running

    def _check_attached(self) -> None:
        if not self._handles:
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
                **model_kwargs):
        """The base model's output with the edit. input_ids, attention_mask: (B, L).

        prompt_lengths (B,): real prompt tokens per row (default attention_mask.sum(1)); positions
        after the prompt are never edited. Other kwargs (labels, position_ids, ...) pass through.
        With left padding, decoder-only models need position_ids counting real tokens
        ((mask.cumsum(-1) − 1).clamp(min=0)) for a row's logits not to depend on its padding;
        for decoder-only models whose forward takes position_ids, they are filled in so when not
        given (as generate() does), so a row's result is the same alone or padded on either side.
        edit_plan: this batch's EditPlan made ahead (train() builds it from the host copy of the
        mask, so checking the mask reads no device memory); default: built from attention_mask.
        """
        self._check_attached()
        self._check_checkpointing()
        x = input_ids if input_ids is not None else model_kwargs.get("inputs_embeds")
        if x is None:
            raise ValueError("pass input_ids (B, L) or inputs_embeds (B, L, d)")
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        if edit_plan is None:
            edit_plan = EditPlan.from_mask(attention_mask, prompt_lengths, self.config)
        elif (edit_plan.batch, edit_plan.length) != tuple(attention_mask.shape):
            raise ValueError(f"edit_plan is for a batch of {edit_plan.batch} x {edit_plan.length}, but "
                             f"attention_mask is {tuple(attention_mask.shape)}")
        self._plan_source = edit_plan
        if (self._fill_position_ids and "position_ids" not in model_kwargs
                and model_kwargs.get("past_key_values") is None):
            model_kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        try:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **model_kwargs)
        finally:
            self._plan_source = self._plan = None

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **generate_kwargs):
        """The base model's generate(); the whole input is the prompt.

        The prefill (the call that starts at position 0) is edited; decode steps that continue
        the KV cache are not. Greedy, sampling and beam search (rows expanded by
        repeat_interleave, as HF does) work; attention_mask defaults to all ones.
        """
        self._check_attached()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._plan_source = EditPlan.from_mask(attention_mask, None, self.config)
        try:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        finally:
            self._plan_source = self._plan = None

    # -- parameters

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """("{layer}.{group}.{param}", parameter): the adapter's tensors, named as in the file."""
        for name, p in self.interventions.named_parameters():
            if p.requires_grad:
                yield name, p

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for _, p in self.named_trainable_parameters())

    def adapter_state(self) -> dict:
        """{"{layer}.{group}.{param}": np.ndarray}: the parameters as minireft.io stores them."""
        return {name: p.detach().cpu().numpy().copy() for name, p in self.interventions.named_parameters()}

    # -- detach, save, load

    def detach(self) -> nn.Module:
        """Remove every hook, restore requires_grad and train/eval mode; return the base model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, p.requires_grad))
        self.model.train(self._was_training)
        _ATTACHED.discard(self.model)
        return self.model

    def _base_model_name(self) -> str | None:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", None) or getattr(
            self.model, "name_or_path", None)
        return str(name) if name else None

    # How the training prompts were built (chat template or not, and the template's hash):
    # train() sets it, save_pretrained records it, from_pretrained reads it back.
    prompt_format: PromptFormat | None = None

    def save_pretrained(self, path, *, extra_files: dict[str, bytes] | None = None,
                        prompt_format: PromptFormat | None = None):
        """Write the adapter folder (reft_config.json + reft_model.safetensors, and any
        extra_files {name: bytes}) atomically. reft_config.json records `prompt_format`
        (default: self.prompt_format, which train() sets; omitted when unknown)."""
        fmt = prompt_format if prompt_format is not None else self.prompt_format
        return io.save_adapter(path, self.config, self.adapter_state(), base_model=self._base_model_name(),
                               extra_files=extra_files, prompt_format=fmt.to_dict() if fmt else None)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path, *, module_path: str | None = None,
                        tokenizer=None) -> ReftModel:
        """attach(model, saved config) with the saved parameters restored bit for bit, and
        prompt_format set from the adapter (minireft.hf.prompt_format.read_prompt_format; None
        when unknown). With `tokenizer`, warns (UserWarning, one line) when the adapter was
        trained with a chat template that this tokenizer does not have."""
        config, params = io.load_adapter(path)
        saved_d = int(io.read_meta(path)["hidden_size"])
        d = hidden_size_of(model)
        if saved_d != d:
            raise ValueError(f"the adapter at {path} was trained for hidden size {saved_d}, but this "
                             f"{type(model).__name__} has hidden size {d}")
        fmt = read_prompt_format(path)
        reft = cls(model, config, module_path=module_path)
        with torch.no_grad():
            for name, p in reft.interventions.named_parameters():
                p.copy_(torch.from_numpy(params[name]))
        reft.prompt_format = fmt
        mismatch = template_mismatch(fmt, tokenizer) if tokenizer is not None else None
        if mismatch:
            warnings.warn(mismatch, UserWarning, stacklevel=2)
        return reft


def attach(model: nn.Module, config: ReftConfig, *, seed: int = 0, module_path: str | None = None) -> ReftModel:
    """Freeze `model` and edit the output of blocks config.layers with fresh interventions
    (init config.init, drawn from `seed`). module_path overrides config.module_path."""
    return ReftModel(model, config, seed=seed, module_path=module_path)
