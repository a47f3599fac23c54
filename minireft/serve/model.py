"""vLLM model classes with ReFT: each supported architecture subclassed, its blocks hooked.

At each forward pass the tokens of the flat batch get (position t, prompt length n,
adapter a) from vLLM's positions, its attention metadata (query_start_loc: which tokens
belong to which row) and ReftBatchTracker (row → n, a); one PackedPlan serves every
hooked layer. A hooked block's output is the residual stream h = hidden_states + residual
(vLLM defers the residual add to the next layer's fused add-norm); where the plan edits,
the block returns (packed_edit(h), 0), which the next layer's add reads back exactly.
"""

from __future__ import annotations

import functools
import importlib

import torch

from minireft.serve.adapters import ARCHITECTURES, from_env, load_all
from minireft.serve.tracker import ReftBatchTracker
from minireft.torch.edit import PackedPlan, apply_phi
from minireft.torch.modules import KINDS


class ServedAdapters:
    """The adapters of one model: per hooked layer, {(adapter index, group): Φ}."""

    def __init__(self, adapters, device):
        self.configs = [a.config for a in adapters]
        self.phis = {}  # {layer: {(k, group): callable (K, d) → (K, d)}}
        for k, adapter in enumerate(adapters):
            math = KINDS[adapter.config.intervention]
            for layer in adapter.config.layers:
                for group, p in adapter.layer(layer).items():
                    args = [torch.from_numpy(p[name]).to(device) for name in math.PARAMS]
                    self.phis.setdefault(layer, {})[(k, group)] = functools.partial(apply_phi, math, args)
        self.plan = None

    def begin(self, positions: torch.Tensor) -> None:
        """The plan of this forward pass, or None (no adapter row, or a profiling run)."""
        self.plan = None
        tracker = ReftBatchTracker.current
        if tracker is None or not tracker.rows:
            return
        from vllm.forward_context import get_forward_context

        metadata = get_forward_context().attn_metadata
        if not isinstance(metadata, dict) or not metadata:
            return  # a dummy or micro-batched run: nothing to route
        starts = next(iter(metadata.values())).query_start_loc.cpu()  # (R + 1,)
        rows = len(starts) - 1
        n_row = torch.ones(rows, dtype=torch.long)  # (R,)
        a_row = torch.full((rows,), -1, dtype=torch.long)  # (R,)
        for row, (n, a) in tracker.rows.items():
            if row < rows:
                n_row[row], a_row[row] = n, a
        if not bool((a_row >= 0).any()):
            return
        row_of = torch.repeat_interleave(torch.arange(rows), starts.diff())  # (T,)
        tokens = int(starts[-1])
        plan = PackedPlan.from_tokens(positions[:tokens].cpu(), n_row[row_of], a_row[row_of],
                                      self.configs, tokens)
        if not plan.empty:
            device = positions.device
            plan.index = {key: index.to(device) for key, index in plan.index.items()}
            self.plan = plan

    def hook(self, layer: int):
        phis = self.phis[layer]

        def edit_block_output(module, args, output):
            if self.plan is None:
                return None
            hidden, residual = output  # (T, d) each: the block output is their sum
            h = hidden + residual
            out = self.plan.apply(h, phis)
            if out is h:
                return None  # no adapter of this pass edits this layer
            return out, torch.zeros_like(residual)

        return edit_block_output


def _reft_class(arch: str):
    """A subclass of vLLM's `arch` that loads the served adapters and hooks their blocks."""
    from vllm.model_executor.models.registry import _TEXT_GENERATION_MODELS

    module, name = _TEXT_GENERATION_MODELS[arch]
    base = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), name)

    class Reft(base):
        def __init__(self, *, vllm_config, prefix: str = ""):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
            text = vllm_config.model_config.hf_config.get_text_config()
            adapters = load_all(from_env(), text.hidden_size, text.num_hidden_layers)
            ReftBatchTracker.names = {a.name: k for k, a in enumerate(adapters)}
            device = next(self.parameters()).device
            self.minireft = ServedAdapters(adapters, device)
            for layer in self.minireft.phis:
                self.model.layers[layer].register_forward_hook(self.minireft.hook(layer))

        def forward(self, input_ids, positions, *args, **kwargs):
            self.minireft.begin(positions)
            try:
                return super().forward(input_ids, positions, *args, **kwargs)
            finally:
                self.minireft.plan = None

    Reft.__name__ = Reft.__qualname__ = arch
    return Reft


def __getattr__(name: str):
    """minireft.serve.model:<arch>, the path plugin.register gives vLLM's ModelRegistry."""
    if name in ARCHITECTURES:
        cls = _reft_class(name)
        globals()[name] = cls
        return cls
    raise AttributeError(name)
