"""nn.Modules holding one intervention's parameters.

Parameters live in their own dtype (float32 by default) whatever the model's; the
hidden state is cast to it for the edit and the result cast back (as HF PEFT does).
Dropout, when set, acts on the edit: out = h + dropout(Φ(h) − h), training only.
"""

from __future__ import annotations

import torch
from torch import nn

from minireft.torch import consreft, direft, lobireft, loreft, noreft, ortho_direft

KINDS = {"loreft": loreft, "direft": direft, "noreft": noreft, "consreft": consreft,
         "lobireft": lobireft, "ortho_direft": ortho_direft}


class Intervention(nn.Module):
    """Φ(h) for one (layer, group), of any kind in KINDS: LoReFT Φ(h) = h + Rᵀ(Wh + b − Rh),
    DiReFT h + W2ᵀ(W1h + b), NoReFT h + W2ᵀ(W1h + b − W2h), ConsReFT h + Rᵀ(b − Rh),
    LobiReFT h + Rᵀb, orthogonal DiReFT h + Rᵀ(Wh + b). A parameter named R is orthonormal
    (ReftOptimizer.for_named_parameters keeps every "*.R" on the Stiefel manifold)."""

    def __init__(self, kind: str, hidden_size: int, rank: int, *, init: str = "paper", dropout: float = 0.0,
                 dtype: torch.dtype = torch.float32, device=None, generator: torch.Generator | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"intervention must be one of {sorted(KINDS)}, got {kind!r}")
        if not 1 <= rank <= hidden_size:
            raise ValueError(f"rank={rank} must satisfy 1 <= rank <= hidden size {hidden_size}")
        self.kind = kind
        self.hidden_size = hidden_size
        self.rank = rank
        self.dropout = dropout
        self._math = KINDS[kind]
        for name, value in self._math.init(hidden_size, rank, generator, kind=init, dtype=dtype).items():
            self.register_parameter(name, nn.Parameter(value.to(device)))

    @property
    def param_names(self) -> tuple[str, ...]:
        return self._math.PARAMS

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (..., d) in any float dtype; returns Φ(h) in h's dtype."""
        params = [getattr(self, name) for name in self._math.PARAMS]
        x = h.to(params[0].dtype)
        out = self._math.apply(x, *params)
        if self.dropout and self.training:
            out = x + nn.functional.dropout(out - x, p=self.dropout, training=True)
        return out.to(h.dtype)

    def extra_repr(self) -> str:
        return f"{self.kind}, hidden_size={self.hidden_size}, rank={self.rank}, dropout={self.dropout}"
