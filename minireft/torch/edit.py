"""PyTorch mirror of minireft.edit: Φ_g at each group's edited positions, vectorised.

    H'[b, t] = Φ_g(H[b, t])   if column t of row b is an edited position of group g
    H'[b, t] = H[b, t]        otherwise

The positions are the spec's (minireft.edit): row b's first real column f_b (left or right
padding) plus intervention_positions(n_b, p, s). Here they are computed for the whole
batch at once (`position_index`), once per forward call, into an `EditPlan`: per group,
the K_g edited (row, column) pairs. Applying the plan to H (B, L, d) gathers H[rows, cols]
(K_g, d), applies Φ_g once, and writes every group's result into one copy of H with
index_put: the work beyond that copy is proportional to the edited positions, and
unedited entries are H's, bit for bit. ReftModel's block hooks apply the plan with their
Intervention modules, so the hook is this mirror; routing plans to rows (several adapters in
one batch, generate()'s repeated rows) is minireft.hf.edit_plan's.
"""

from __future__ import annotations

import functools

import torch

from minireft.config import ReftConfig
from minireft.edit import adapter_plan, group_params
from minireft.torch.modules import KINDS  # config.intervention -> the mirror's math


def edit(h, attention_mask, prompt_lengths, config: ReftConfig, params: dict) -> torch.Tensor:
    """H' = H with Φ_g applied at group g's edited positions of every row (minireft.edit.edit).

    h: (B, L, d); attention_mask: (B, L) of 0/1; prompt_lengths: (B,) integer tensor or None;
    params: {group: {param: tensor}}. Differentiable (Φ's analytic backward); h unchanged.
    """
    plan = EditPlan.from_mask(attention_mask, prompt_lengths, config)
    _check_h(h, attention_mask)
    math, params = group_params(config, params, KINDS)
    return plan.apply(h, {g: functools.partial(apply_phi, math, args) for g, args in params.items()})


def edit_vjp(h, attention_mask, prompt_lengths, config: ReftConfig, params: dict, dout):
    """(dh, grads) of `edit` against dout (B, L, d), as minireft.edit.edit_vjp: dh = dout but at
    edited positions; grads {group: {param: Σ over group g's edited positions}}."""
    plan = EditPlan.from_mask(attention_mask, prompt_lengths, config)
    _check_h(h, attention_mask)
    if not isinstance(dout, torch.Tensor) or dout.shape != h.shape or dout.dtype != h.dtype:
        raise ValueError(f"dout must match h: shape {tuple(h.shape)} dtype {h.dtype}")
    math, params = group_params(config, params, KINDS)
    dh, grads = dout, {}
    for group, args in params.items():
        index = plan.index(group, h.device)
        dtype = args[0].dtype
        dx, *dparams = math.vjp(h[index].to(dtype), *args, dout[index].to(dtype))  # (K, d), ...
        dh = dh.index_put(index, dx.to(h.dtype))
        grads[group] = dict(zip(math.PARAMS, dparams))
    return dh, grads


def apply_phi(math, args, x):
    """Φ(x) in the parameters' dtype, cast back to x's (SPEC §10), with the analytic backward."""
    return math.apply(x.to(args[0].dtype), *args).to(x.dtype)


def _check_h(h, mask) -> None:
    if not isinstance(h, torch.Tensor) or h.dim() != 3 or tuple(h.shape[:2]) != tuple(mask.shape):
        raise ValueError(f"h must be a (batch, length, hidden) tensor whose first two sizes are the "
                         f"attention_mask's {tuple(mask.shape)}, got {getattr(h, 'shape', type(h).__name__)}")


# ----------------------------------------------------------------------------- positions


def position_index(first: torch.Tensor, prompt_lengths: torch.Tensor, prefix: int, suffix: int,
                   tied: bool, rule: str = "paper") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{group: (index, valid)}, both (B, P): the edited positions of each row, vectorised.

    Row b edits f_b + intervention_positions(n_b, p, s, rule) with f = first (B,), n =
    prompt_lengths (B,); rule "paper": for n_b < p + s, p_b = min(p, ⌊n_b/2⌋), s_b = min(s,
    ⌈n_b/2⌉); rule "pyreft": p_b = min(p, ⌊n_b/2⌋), s_b = min(s, ⌊n_b/2⌋) always. Prefix entry j is
    f + j (valid iff j < p_b); suffix entry j is f + n − s_b + j (valid iff j < s_b). Invalid
    entries point at f, a real token, so that gathering them is always in range.
    Groups: {"tied": P = p + s} or {"prefix": P = p, "suffix": P = s} (empty groups dropped).
    """
    first, n = first[:, None], prompt_lengths[:, None]  # (B, 1)
    if rule == "pyreft":
        p, s = torch.clamp(n // 2, max=prefix), torch.clamp(n // 2, max=suffix)  # (B, 1)
    else:
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


class EditPlan:
    """The edited positions of one batch: per group, K_g (row, column) pairs, row-major."""

    def __init__(self, pairs: dict, batch: int, length: int):
        self.pairs = pairs  # {group: (rows (K_g,), cols (K_g,))}, long tensors
        self.batch = batch
        self.length = length  # L0: the prompt batch's width; every column is < L0
        self._on = {}  # {(group, device): the pair on that device}

    @classmethod
    def from_mask(cls, mask: torch.Tensor, prompt_lengths, config: ReftConfig) -> EditPlan:
        """Validate the (B, L) attention mask and prompt lengths (one device sync), then index."""
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            raise ValueError(f"attention_mask must be a (batch, length) tensor of 0/1, got "
                             f"{getattr(mask, 'shape', type(mask).__name__)}")
        real = mask != 0  # (B, L)
        B, L = real.shape
        count = real.sum(1)  # (B,)
        # argmax needs a column: with none (B, 0), every row is empty and refused below, as the spec does
        first = real.int().argmax(1) if L else count  # (B,): argmax returns the first maximum
        last = L - 1 - real.flip(1).int().argmax(1) if L else count - 1  # (B,)
        n = count if prompt_lengths is None else _prompt_lengths(prompt_lengths, B, mask.device)
        bad = (count == 0) | (last - first + 1 != count) | (n < 1) | (n > count)  # (B,)
        not_binary = (real & (mask != 1)).any()
        if bool(bad.any() | not_binary):  # the one sync
            if bool(not_binary):
                raise ValueError(f"attention_mask must hold 0 (padding) and 1 (real token) only, got "
                                 f"values {torch.unique(mask)[:8].tolist()}")
            raise ValueError(_first_bad_row(real, count, first, last, n))
        prefix, suffix = config.prefix_suffix
        pairs = {}
        for group, (index, valid) in position_index(first, n, prefix, suffix, config.tied,
                                                       config.position_rule).items():
            rows = torch.arange(B, device=index.device)[:, None].expand_as(index)  # (B, P)
            pairs[group] = (rows[valid], index[valid])  # (K_g,) each, row-major
        return cls(pairs, B, L)

    def index(self, group: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols), (K_g,) each, on `device`: h[rows, cols] are group g's edited states."""
        key = (group, device)
        if key not in self._on:
            self._on[key] = tuple(t.to(device) for t in self.pairs[group])
        return self._on[key]

    def apply(self, h: torch.Tensor, phis) -> torch.Tensor:
        """H' = H with H[rows_g, cols_g] ← Φ_g(H[rows_g, cols_g]) for every group g of phis
        ({group: callable (K, d) → (K, d)}, e.g. a ModuleDict of Interventions). h: (B, L, d)."""
        rows, cols, values = self.edits(h, phis)  # (K,), (K,), (K, d)
        return h.index_put((rows, cols), values)

    def edits(self, h: torch.Tensor, phis) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows (K,), cols (K,), Φ(H[rows, cols]) (K, d)): every group's edited states, edited,
        groups concatenated; `apply` writes them into a copy of h (B, L, d) (minireft.hf.edit_plan
        writes several plans' at once)."""
        if h.dim() != 3 or h.shape[0] != self.batch or h.shape[1] < self.length:
            raise RuntimeError(f"a hooked block returned hidden states of shape {tuple(h.shape)}, but the "
                               f"edit plan is for batch {self.batch} and at least {self.length} positions")
        rows, cols, edits = [], [], []
        for group, phi in phis.items():
            r, c = self.index(group, h.device)
            rows.append(r)
            cols.append(c)
            edits.append(phi(h[r, c]))  # (K_g, d)
        return torch.cat(rows), torch.cat(cols), torch.cat(edits)


def _prompt_lengths(prompt_lengths, batch: int, device) -> torch.Tensor:
    n = torch.as_tensor(prompt_lengths, device=device)
    if n.shape != (batch,) or n.is_floating_point() or n.dtype == torch.bool:
        raise ValueError(f"prompt_lengths must be an integer tensor of shape ({batch},) (one length per row), "
                         f"got dtype {n.dtype} and shape {tuple(n.shape)}")
    return n.long()


# ----------------------------------------------------------------------------- the packed edit


def packed_edit(h, positions, prompt_lengths, adapter_ids, adapters) -> torch.Tensor:
    """h'_i = Φ_{a_i, g}(h_i) where adapter a_i's rule picks t_i < n_i (minireft.edit.packed_edit).

    h: (T, d); positions, prompt_lengths, adapter_ids: (T,) integer tensors (adapter −1: none);
    adapters: [(config, {group: {param: tensor}}) or None]. Differentiable; h unchanged. Each
    (adapter, group) is one gather, one Φ and one index_put (`PackedPlan`), so values equal the
    spec's within rounding (the spec applies Φ per run of a sequence).
    """
    if not isinstance(h, torch.Tensor) or h.dim() != 2:
        raise ValueError(f"h must be a (tokens, hidden) tensor, got {getattr(h, 'shape', type(h).__name__)}")
    configs, phis = [], {}
    for k, entry in enumerate(adapters):
        plan = adapter_plan(k, entry, KINDS)
        if plan is None:
            configs.append(None)
            continue
        config, math, ordered = plan
        configs.append(config)
        phis.update({(k, g): functools.partial(apply_phi, math, args) for g, args in ordered.items()})
    plan = PackedPlan.from_tokens(positions, prompt_lengths, adapter_ids, configs, len(h), h.device)
    out = plan.apply(h, phis)
    return h.clone() if out is h else out  # a new tensor, as the spec returns


class PackedPlan:
    """The edited tokens of one flat batch: per (adapter k, group g), the indices (K,) of the
    tokens i with a_i = k whose t_i is in g's positions for a prompt of n_i tokens.

    Built once per forward pass (the positions do not change from layer to layer) and
    applied at every hooked layer with that layer's Φs. Vectorised as `position_index`:
    p_i, s_i clamp p, s for short prompts (rule "paper" or "pyreft"); prefix: t_i < p_i;
    suffix: n_i − s_i ≤ t_i < n_i.
    """

    def __init__(self, index: dict):
        self.index = index  # {(k, group): (K,) long tensor}, only non-empty entries

    @property
    def empty(self) -> bool:
        return not self.index

    @classmethod
    def from_tokens(cls, positions, prompt_lengths, adapter_ids, configs, tokens: int,
                    device=None) -> PackedPlan:
        """configs: [ReftConfig or None] by adapter index. Validates the (T,) integer arrays
        (one device sync) and names the first bad token as the spec does."""
        t, n, a = (_token_ints(x, name, tokens, device) for x, name in (
            (positions, "positions"), (prompt_lengths, "prompt_lengths"), (adapter_ids, "adapter_ids")))
        bad = (t < 0) | (n < 1) | (a < -1) | (a >= len(configs))  # (T,)
        if bool(bad.any()):
            i = int(bad.int().argmax())
            what = [(t, "positions", 0), (n, "prompt_lengths", 1), (a, "adapter_ids", -1)]
            for x, name, low in what:
                if int(x[i]) < low:
                    raise ValueError(f"token {i} has {name} {int(x[i])}; it must be >= {low}")
            raise ValueError(f"token {i} has adapter_id {int(a[i])}, but only {len(configs)} adapters "
                             f"were given")
        index = {}
        for k, config in enumerate(configs):
            if config is None:
                continue
            for group, chosen in token_groups(t, n, config).items():
                rows = torch.nonzero(chosen & (a == k)).flatten()  # (K,)
                if rows.numel():
                    index[(k, group)] = rows
        return cls(index)

    def apply(self, h: torch.Tensor, phis: dict) -> torch.Tensor:
        """h (T, d) with h[index_{k,g}] ← Φ_{k,g}(h[index_{k,g}]) for every (k, g) of the plan
        (phis {(k, group): callable (K, d) → (K, d)}; a missing key: adapter k does not edit this
        layer). Returns h itself when nothing is edited (a decode step), else one new tensor."""
        rows, values = [], []
        for key, index in self.index.items():
            if key in phis:
                rows.append(index)
                values.append(phis[key](h[index]))  # (K, d)
        if not rows:
            return h
        return h.index_put((torch.cat(rows),), torch.cat(values))


def token_groups(positions: torch.Tensor, prompt_lengths: torch.Tensor,
                 config: ReftConfig) -> dict[str, torch.Tensor]:
    """{group: (T,) bool}: which tokens group g edits, for positions t and prompt lengths n (T,)
    (minireft.edit.packed_groups, vectorised; t ≥ n is never edited)."""
    prefix, suffix = config.prefix_suffix
    t, n = positions, prompt_lengths
    if config.position_rule == "pyreft":
        p, s = torch.clamp(n // 2, max=prefix), torch.clamp(n // 2, max=suffix)  # (T,)
    else:
        short = n < prefix + suffix
        p = torch.where(short, torch.clamp(n // 2, max=prefix), prefix)  # (T,)
        s = torch.where(short, torch.clamp((n + 1) // 2, max=suffix), suffix)  # (T,)
    pre, suf = t < p, (t >= n - s) & (t < n)  # (T,) each
    groups = {"tied": pre | suf, "prefix": pre, "suffix": suf}
    return {g: groups[g] for g in config.groups}


def _token_ints(x, name: str, tokens: int, device) -> torch.Tensor:
    x = torch.as_tensor(x, device=device)
    if x.shape != (tokens,) or (x.numel() and (x.is_floating_point() or x.dtype == torch.bool)):
        raise ValueError(f"{name} must be an integer array of shape ({tokens},) (one per token of h), "
                         f"got dtype {x.dtype} and shape {tuple(x.shape)}")
    return x.long()
