"""Which request sits at which row of vLLM's batch: a logits processor that edits no logit.

vLLM tells each logits processor, before every forward pass, which requests were added to,
removed from or moved within its persistent batch; that is the per-row state the packed
edit needs (prompt length, adapter), kept here for the hooked model to read.
"""

from __future__ import annotations

from vllm.v1.sample.logits_processor import LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from minireft.serve.adapters import EXTRA_ARG, from_env


class ReftBatchTracker(LogitsProcessor):
    """Which request sits at which row of vLLM's persistent batch: row → (prompt length n,
    adapter index). vLLM calls update_state before every forward pass with the rows added,
    removed and moved; the hooked model reads `rows` during that pass. Logits pass unchanged.
    """

    names: dict[str, int] = {}  # adapter name → index, set by the hooked model at load
    current = None  # the tracker of this worker process

    def __init__(self, vllm_config, device, is_pin_memory: bool):
        self.rows: dict[int, tuple[int, int]] = {}
        type(self).current = self

    @classmethod
    def validate_params(cls, sampling_params):
        """An unknown adapter name is refused before the request is queued (HTTP 400)."""
        name = (sampling_params.extra_args or {}).get(EXTRA_ARG)
        adapters = [n for n, _ in from_env() or []]
        if name is not None and name not in adapters:
            raise ValueError(f"unknown adapter {name!r}; this server has {adapters}")

    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits):
        return logits

    def update_state(self, batch_update) -> None:
        process_dict_updates(self.rows, batch_update, self._row)

    def _row(self, params, prompt_tok_ids, output_tok_ids):
        name = (getattr(params, "extra_args", None) or {}).get(EXTRA_ARG)
        if name is None or prompt_tok_ids is None:
            return None  # the bare model: no entry, adapter −1
        return len(prompt_tok_ids), type(self).names[name]
