"""The edit plan of one forward call: which positions of which rows each group edits.

Row b's real tokens are located from the attention mask (left or right padding); with
first real token f_b and prompt length n_b, the edited positions are
f_b + intervention_positions(n_b, p, s) (the paper's "f{p}+l{s}" rule, short prompts
included). See ReftModel's module for how a hooked block applies the plan.
"""

from __future__ import annotations

import torch
from torch import nn

from minireft.config import ReftConfig


def position_index(first: torch.Tensor, prompt_lengths: torch.Tensor, prefix: int, suffix: int,
                   tied: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{group: (index, valid)}, both (B, P): the edited positions of each row, vectorised.

    Row b edits f_b + intervention_positions(n_b, p, s) with f = first (B,), n = prompt_lengths
    (B,); for n_b < p + s: p_b = min(p, ⌊n_b/2⌋), s_b = min(s, ⌈n_b/2⌉). Prefix entry j is
    f + j (valid iff j < p_b); suffix entry j is f + n − s_b + j (valid iff j < s_b). Invalid
    entries point at f, a real token, so that gathering them is always in range.
    Groups: {"tied": P = p + s} or {"prefix": P = p, "suffix": P = s} (empty groups dropped).
    """
    first, n = first[:, None], prompt_lengths[:, None]  # (B, 1)
    short = n < prefix + suffix
    p = torch.where(short, torch.clamp(n // 2, max=prefix), prefix)  # (B, 1)
    s = torch.where(short, torch.clamp((n + 1) // 2, max=suffix), suffix)  # (B, 1)
    jp = torch.arange(prefix, device=n.device)  # (p,)
    js = torch.arange(suffix, device=n.device)  # (s,)
    groups = {"prefix": (first + jp, jp < p), "suffix": (first + n - s + js, js < s)}
    if tied:
        groups = {"tied": tuple(torch.cat(pair, dim=1) for pair in zip(*groups.values()))}
    return {g: (torch.where(valid, index, first), valid)
            for g, (index, valid) in groups.items() if index.shape[1] > 0}


def _first_bad_row(real: torch.Tensor, count, first, last, n) -> str:
    """A message naming the first row whose mask or prompt length cannot be edited."""
    count, first, last, n = (t.cpu() for t in (count, first, last, n))
    for b in range(len(count)):
        if count[b] == 0:
            return (f"row {b} is empty (its attention_mask is all zero): an empty prompt has no token "
                    f"to edit; drop the row or give it at least one real token")
        if last[b] - first[b] + 1 != count[b]:
            return (f"row {b}'s real tokens are not contiguous (attention_mask {real[b].int().tolist()}); "
                    f"padding must be on the left or on the right only")
        if not 1 <= n[b] <= count[b]:
            return (f"row {b} has prompt_length {int(n[b])}, but must have 1 <= prompt_length <= its "
                    f"{int(count[b])} real tokens (an empty prompt cannot be edited)")
    raise AssertionError("no bad row")


class _Plan:
    """The index tensors of one forward call: where each group gathers and writes back."""

    def __init__(self, groups: dict, batch: int, length: int):
        self.groups = groups  # {group: (index (B, P), valid (B, P))}
        self.batch = batch
        self.length = length  # L0: the prompt batch's width; every index is < L0
        self._maps = {}

    @classmethod
    def from_mask(cls, mask: torch.Tensor, prompt_lengths, config: ReftConfig) -> _Plan:
        """Validate the (B, L) attention mask and prompt lengths (one device sync), then index."""
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            raise ValueError(f"attention_mask must be a (batch, length) tensor of 0/1, got "
                             f"{getattr(mask, 'shape', type(mask).__name__)}")
        real = mask != 0  # (B, L)
        B, L = real.shape
        count = real.sum(1)  # (B,)
        first = real.int().argmax(1)  # (B,): argmax returns the first maximum
        last = L - 1 - real.flip(1).int().argmax(1)  # (B,)
        n = count if prompt_lengths is None else _prompt_lengths(prompt_lengths, B, mask.device)
        bad = (count == 0) | (last - first + 1 != count) | (n < 1) | (n > count)
        if bool(bad.any()):
            raise ValueError(_first_bad_row(real, count, first, last, n))
        prefix, suffix = config.prefix_suffix
        return cls(position_index(first, n, prefix, suffix, config.tied), B, L)

    def expand(self, k: int) -> _Plan:
        """Each row repeated k times in place, as generate() expands rows for beams and samples."""
        groups = {g: tuple(t.repeat_interleave(k, dim=0) for t in pair) for g, pair in self.groups.items()}
        return _Plan(groups, self.batch * k, self.length)

    def _maps_for(self, group: str, L: int, d: int, device):
        """(gather (B, P, d), slot (B, L, d), edited (B, L, 1)) for hidden states of length L."""
        key = (group, L, d, device)
        if key not in self._maps:
            index, valid = (t.to(device) for t in self.groups[group])
            B, P = index.shape
            # Invalid entries write into an extra column L that is cut off, so they never
            # collide with (and never overwrite) a real position's slot.
            target = torch.where(valid, index, L)  # (B, P)
            slot = torch.zeros(B, L + 1, dtype=torch.long, device=device)
            slot.scatter_(1, target, torch.arange(P, device=device).expand(B, P))
            edited = torch.zeros(B, L + 1, dtype=torch.bool, device=device).scatter_(1, target, True)
            self._maps[key] = (index[..., None].expand(B, P, d), slot[:, :L, None].expand(B, L, d),
                               edited[:, :L, None])
        return self._maps[key]

    def apply(self, h: torch.Tensor, interventions: nn.ModuleDict) -> torch.Tensor:
        """H' = where(edited, Φ_g(H[positions])[slot], H) for each group g. h: (B, L, d)."""
        if h.dim() != 3 or h.shape[0] != self.batch or h.shape[1] < self.length:
            raise RuntimeError(f"a hooked block returned hidden states of shape {tuple(h.shape)}, but the "
                               f"edit plan is for batch {self.batch} and at least {self.length} positions")
        L, d = h.shape[1:]
        for group, intervention in interventions.items():
            gather, slot, edited = self._maps_for(group, L, d, h.device)
            edits = intervention(h.gather(1, gather))  # (B, P, d): Φ at the edited positions
            h = torch.where(edited, edits.gather(1, slot), h)  # (B, L, d)
        return h


def _prompt_lengths(prompt_lengths, batch: int, device) -> torch.Tensor:
    n = torch.as_tensor(prompt_lengths, device=device)
    if n.shape != (batch,) or n.is_floating_point() or n.dtype == torch.bool:
        raise ValueError(f"prompt_lengths must be an integer tensor of shape ({batch},) (one length per row), "
                         f"got dtype {n.dtype} and shape {tuple(n.shape)}")
    return n.long()


