"""Sequence classification with an encoder: a ReFT intervention plus a trained linear head,
as the paper's GLUE runs (the encoder stays frozen; only Φ and the head learn).

    z = pool(H)                      H: (B, T, d) the edited encoder's last hidden states
    logits = z Wᵀ + c                W: (C, d), c: (C,), logits: (B, C)

pool "first" takes each row's first real token ([CLS] for BERT-style tokenizers; found
from the attention mask, so left padding works); "mean" averages the real tokens,
z_b = Σ_t m_bt H_bt / Σ_t m_bt.

On disk the head sits beside the adapter: head.safetensors ({"weight", "bias"}) and
classifier_config.json (num_labels, pooling, hidden_size, label names). No pickle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

HEAD_FILE = "head.safetensors"
HEAD_CONFIG_FILE = "classifier_config.json"
POOLINGS = ("first", "mean")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, d), (B, T) → (B, d): the first real token, or the mean of the real tokens."""
    if pooling == "first":
        first = attention_mask.argmax(dim=1)  # (B,): index of each row's first 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
    raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")


class ReftClassifier(nn.Module):
    """An encoder ReftModel plus a linear head: logits = pool(H) Wᵀ + c, shape (B, C).

    The head is float32 and starts as nn.Linear does, W, c ~ U(−1/√d, 1/√d), drawn from
    a generator seeded with `seed`. Trainable: the interventions and the head.
    """

    def __init__(self, reft_model, num_labels: int, *, pooling: str = "first", seed: int = 0,
                 labels: list[str] | None = None):
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        if labels is not None and len(labels) != num_labels:
            raise ValueError(f"labels has {len(labels)} names but num_labels={num_labels}")
        self.reft_model = reft_model
        self.num_labels = num_labels
        self.pooling = pooling
        self.labels = list(labels) if labels is not None else None
        d = reft_model.hidden_size
        device = next(reft_model.model.parameters()).device
        self.head = nn.Linear(d, num_labels, device=device)
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(d)
        with torch.no_grad():
            self.head.weight.copy_(torch.rand(num_labels, d, generator=g) * (2 * bound) - bound)
            self.head.bias.copy_(torch.rand(num_labels, generator=g) * (2 * bound) - bound)

    @property
    def hidden_size(self) -> int:
        return self.reft_model.hidden_size

    def forward(self, input_ids, attention_mask=None, *, prompt_lengths=None, **model_kwargs):
        """input_ids, attention_mask: (B, T) → logits (B, C) in float32."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.reft_model(input_ids=input_ids, attention_mask=attention_mask,
                              prompt_lengths=prompt_lengths, output_hidden_states=True, **model_kwargs)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:  # a model with a task head: its last hidden states are the edited ones
            hidden = out.hidden_states[-1]
        z = pool(hidden.to(self.head.weight.dtype), attention_mask, self.pooling)  # (B, d)
        return self.head(z)

    @torch.no_grad()
    def predict(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        """The argmax class per row, (B,) long."""
        return self(input_ids, attention_mask, **kwargs).argmax(dim=-1)

    def named_trainable_parameters(self):
        yield from self.reft_model.named_trainable_parameters()
        for name, p in self.head.named_parameters(prefix="head"):
            if p.requires_grad:
                yield name, p

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for _, p in self.named_trainable_parameters())

    def save_pretrained(self, path) -> Path:
        """The adapter (ReftModel.save_pretrained) plus head.safetensors and classifier_config.json."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        meta = {"num_labels": self.num_labels, "pooling": self.pooling,
                "hidden_size": self.hidden_size, "labels": self.labels}
        # One atomic write: the folder is never seen with an adapter but without its head.
        extra = {HEAD_FILE: save(tensors),
                 HEAD_CONFIG_FILE: (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()}
        return self.reft_model.save_pretrained(Path(path), extra_files=extra)

    @classmethod
    def from_pretrained(cls, model, path) -> ReftClassifier:
        """Attach the saved adapter to `model` (the same base encoder) and load the head."""
        from minireft.hf.model import ReftModel

        path = Path(path)
        for name in (HEAD_FILE, HEAD_CONFIG_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} has no {name}; was it saved by ReftClassifier.save_pretrained?")
        meta = json.loads((path / HEAD_CONFIG_FILE).read_text())
        reft_model = ReftModel.from_pretrained(model, path)
        clf = cls(reft_model, int(meta["num_labels"]), pooling=meta["pooling"], labels=meta.get("labels"))
        state = load_file(str(path / HEAD_FILE))
        want = {k: tuple(v.shape) for k, v in clf.head.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != want:
            raise ValueError(f"{path / HEAD_FILE} holds {got}, but the model and config need {want}")
        clf.head.load_state_dict(state)
        return clf
