"""The edit inside a model: which positions of which rows, and Φ applied there.

For the hidden state H (B, L, d) at the output of one hooked block,

    H'[b, t] = Φ_g(H[b, t])   if column t of row b is an edited position of group g
    H'[b, t] = H[b, t]        otherwise (bit for bit)

Row b's real tokens are the columns where attention_mask[b] is 1 (left or right padding,
contiguous); with f_b its first real column and n_b its prompt length (prompt_lengths[b],
or all its real tokens), (P_b, S_b) = intervention_positions(n_b, p, s) and

    tied:    group "tied" edits columns f_b + P_b ∪ f_b + S_b
    untied:  group "prefix" edits f_b + P_b, group "suffix" edits f_b + S_b

Φ_g is the config's intervention (KINDS) with group g's parameters. params holds the
interventions of ONE layer, nested as {group: {param: array}}: the adapter's
"{layer}.{group}.{param}" tensors of that layer (`layer_params` regroups them). No dropout: this is the evaluation form.
A row is edited alone, so its result never depends on its batch-mates or padding side.
"""

from __future__ import annotations

import numpy as np

from minireft import consreft, direft, lobireft, loreft, noreft, ortho_direft
from minireft.config import ReftConfig
from minireft.positions import intervention_positions

KINDS = {"loreft": loreft, "direft": direft, "noreft": noreft, "consreft": consreft,
         "lobireft": lobireft, "ortho_direft": ortho_direft}  # config.intervention -> the math


def edit(h, attention_mask, prompt_lengths, config: ReftConfig, params: dict) -> np.ndarray:
    """H' = H with Φ_g applied at group g's edited positions of every row (module docstring).

    h: (B, L, d) float32/float64; attention_mask: (B, L) of 0/1; prompt_lengths: (B,) ints
    or None (every real token is prompt); config: ReftConfig (positions, tied, intervention);
    params: {group: {param: array}} for config.groups and config.param_names, (r, d) and (r,).
    Returns a new (B, L, d) array of h's dtype. Where params' dtype differs from h's, the
    edited rows are cast to it, edited and cast back. Raises ValueError naming the row whose
    mask or prompt length cannot be edited.
    """
    h = _check_h(h)
    columns = edited_positions(attention_mask, prompt_lengths, config, length=h.shape[1], batch=len(h))
    math, params = group_params(config, params, KINDS)
    out = h.copy()
    for group, per_row in columns.items():
        args = params[group]
        for b, cols in enumerate(per_row):
            if cols:  # a row edits its block of columns alone: batch-mates never enter Φ
                x = h[b, cols].astype(args[0].dtype)  # (P_b, d)
                out[b, cols] = math.forward(x, *args).astype(h.dtype)
    return out


def edit_vjp(h, attention_mask, prompt_lengths, config: ReftConfig, params: dict, dout):
    """Vector-Jacobian products of `edit` against the cotangent dout (B, L, d).

    Returns (dh, grads): dh (B, L, d) equals dout except at edited positions, where it is
    the Φ_g VJP's dh; grads {group: {param: Σ over group g's edited (b, t) of the Φ_g VJP's
    d-param}}, shaped as params (zeros for a group that edits nothing in this batch). Each
    group's edited rows are gathered in row-major order (b, then t) into one (K_g, d) block.
    """
    h = _check_h(h)
    dout = _check_h(dout, "dout")
    if dout.shape != h.shape or dout.dtype != h.dtype:
        raise ValueError(f"dout must match h: shape {h.shape} dtype {h.dtype}, "
                         f"got shape {dout.shape} dtype {dout.dtype}")
    columns = edited_positions(attention_mask, prompt_lengths, config, length=h.shape[1], batch=len(h))
    math, params = group_params(config, params, KINDS)
    dh, grads = dout.copy(), {}
    for group, per_row in columns.items():
        args = params[group]
        rows = np.array([b for b, cols in enumerate(per_row) for _ in cols], dtype=np.int64)  # (K,)
        cols = np.array([t for c in per_row for t in c], dtype=np.int64)  # (K,)
        x = h[rows, cols].astype(args[0].dtype)  # (K, d)
        g = dout[rows, cols].astype(args[0].dtype)  # (K, d)
        dx, *dparams = math.vjp(x, *args, g)
        dh[rows, cols] = dx.astype(h.dtype)
        grads[group] = dict(zip(math.PARAMS, dparams))
    return dh, grads


def edited_positions(attention_mask, prompt_lengths, config: ReftConfig, *, length=None,
                     batch=None) -> dict[str, list[list[int]]]:
    """{group: [columns of row b, for each row b]}: the 0-based columns each group edits.

    attention_mask: (B, L) of 0/1 (bool or integers; floats equal to 0 or 1 too);
    prompt_lengths: (B,) non-negative ints, or None. length, batch: the L and B that h has,
    checked against the mask when given. Raises ValueError naming the first bad row.
    """
    mask = _check_mask(attention_mask, length, batch)
    n = _check_prompt_lengths(prompt_lengths, len(mask))
    prefix, suffix = config.prefix_suffix
    groups = {g: [] for g in config.groups}
    for b, row in enumerate(mask):
        first, count = _real_span(b, row)
        n_b = count if n is None else int(n[b])
        if not 1 <= n_b <= count:
            raise ValueError(f"row {b} has prompt_length {n_b}, but must have 1 <= prompt_length <= its "
                             f"{count} real tokens (an empty prompt cannot be edited)")
        pre, suf = intervention_positions(n_b, prefix, suffix, rule=config.position_rule)
        pre, suf = [first + t for t in pre], [first + t for t in suf]
        for group, per_row in groups.items():
            per_row.append({"tied": pre + suf, "prefix": pre, "suffix": suf}[group])
    return groups


def layer_params(state: dict, layer: int) -> dict[str, dict[str, np.ndarray]]:
    """{"{layer}.{group}.{param}": array} (an adapter's tensors) → {group: {param: array}}
    of that one layer, the form `edit` takes."""
    out = {}
    for name, value in state.items():
        at, group, param = name.split(".")
        if at == str(layer):
            out.setdefault(group, {})[param] = value
    if not out:
        raise ValueError(f"no tensor of layer {layer}; the names start with "
                         f"{sorted({k.split('.')[0] for k in state})}")
    return out


# ---------------------------------------------------------------- checks


def _real_span(b: int, row: np.ndarray) -> tuple[int, int]:
    """(first real column, number of real tokens) of row b, which must be contiguous."""
    real = np.flatnonzero(row)
    if real.size == 0:
        raise ValueError(f"row {b} is empty (its attention_mask is all zero): an empty prompt has no "
                         f"token to edit; drop the row or give it at least one real token")
    first, count = int(real[0]), int(real.size)
    if int(real[-1]) - first + 1 != count:
        raise ValueError(f"row {b}'s real tokens are not contiguous (attention_mask "
                         f"{row.astype(int).tolist()}); padding must be on the left or on the right only")
    return first, count


def _check_h(h, name: str = "h") -> np.ndarray:
    if not isinstance(h, np.ndarray) or h.dtype not in (np.float32, np.float64) or h.ndim != 3:
        raise ValueError(f"{name} must be a (batch, length, hidden) float32/float64 numpy array, got "
                         f"{type(h).__name__} {getattr(h, 'dtype', '')} {getattr(h, 'shape', '')}")
    return h


def _check_mask(mask, length, batch) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or (length is not None and mask.shape != (batch, length)):
        want = "(batch, length)" if length is None else f"({batch}, {length}), the first two sizes of h"
        raise ValueError(f"attention_mask must have shape {want}, got {mask.shape}")
    if mask.dtype.kind not in "biuf" or not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"attention_mask must hold 0 (padding) and 1 (real token) only, got dtype "
                         f"{mask.dtype} with values {np.unique(mask)[:8].tolist()}")
    return mask != 0  # (B, L) bool


def _check_prompt_lengths(prompt_lengths, batch: int):
    if prompt_lengths is None:
        return None
    n = np.asarray(prompt_lengths)
    if n.shape != (batch,) or n.dtype.kind not in "iu":
        raise ValueError(f"prompt_lengths must be None or an integer array of shape ({batch},) (one "
                         f"length per row), got dtype {n.dtype} and shape {n.shape}")
    return n


def group_params(config: ReftConfig, params: dict, kinds: dict):
    """(kinds[config.intervention], {group: [arrays in its PARAMS order]}); the torch mirror
    passes its own kinds."""
    if not isinstance(config, ReftConfig):
        raise TypeError(f"config must be a minireft.ReftConfig, got {type(config).__name__}")
    math = kinds[config.intervention]
    if not isinstance(params, dict) or set(params) != set(config.groups):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must be {{group: {{param: array}}}} with groups {list(config.groups)} "
                         f"(positions {config.positions!r}, tied={config.tied}), got {got}")
    ordered = {}
    for group, p in params.items():
        if not isinstance(p, dict) or set(p) != set(math.PARAMS):
            got = sorted(p) if isinstance(p, dict) else type(p).__name__
            raise ValueError(f"params[{group!r}] must hold {list(math.PARAMS)} ({config.intervention}), "
                             f"got {got}")
        ordered[group] = [p[name] for name in math.PARAMS]
    return math, ordered


# ---------------------------------------------------------------- the packed edit


def packed_edit(h, positions, prompt_lengths, adapter_ids, adapters) -> np.ndarray:
    """h'_i = Φ_{a_i, g}(h_i) if t_i < n_i and t_i ∈ group g's positions for a prompt of n_i
    tokens under adapter a_i's config; h'_i = h_i otherwise (bit for bit).

    The engine form of `edit`: a batch as one flat run of T tokens, no padding, each token
    carrying its position t_i in its sequence (counted from the prompt's first token), its
    sequence's prompt length n_i and its sequence's adapter a_i (−1: none). Group g's
    positions are `edited_positions`' for one row: (P, S) = intervention_positions(n_i, p, s,
    config.position_rule); tied: "tied" edits P ∪ S; untied: "prefix" P, "suffix" S.
    Decode tokens (t_i ≥ n_i) are never edited, and a prompt that arrives in chunks is edited
    where it would be whole, since t_i counts from the prompt's start.

    h: (T, d) float32/float64; positions, prompt_lengths, adapter_ids: (T,) ints;
    adapters: a sequence of A entries, entry a being (ReftConfig, params) with params
    {group: {param: array}} of the one layer h comes from (as `edit` takes), or None where
    adapter a does not edit this layer. Returns a new (T, d) array of h's dtype.

    Rounding: Φ is applied to one block per (run, group): a run is a maximal stretch of
    tokens continuing one sequence (t_{i+1} = t_i + 1, same n and adapter), and the block its
    group-g tokens in order, as `edit` applies Φ to a row's block. A whole sequence is one
    run, so the result equals `edit` of the padded sequences bit for bit; a prompt split in
    chunks applies Φ to smaller blocks, equal to within BLAS's summation order.
    """
    h = _check_packed_h(h)
    t, n, a = _check_token_ints(len(h), positions=positions, prompt_lengths=prompt_lengths,
                                adapter_ids=adapter_ids)
    plans = [adapter_plan(k, entry) for k, entry in enumerate(_check_adapters(adapters, a))]
    out = h.copy()
    for start, stop in _runs(t, n, a):
        if a[start] < 0 or plans[a[start]] is None:
            continue  # the bare model, or an adapter that does not edit this layer
        config, math, params = plans[a[start]]
        for group, chosen in packed_groups(t[start:stop], int(n[start]), config).items():
            rows = start + np.flatnonzero(chosen)  # (K,) the run's group-g tokens, in order
            if rows.size:
                args = params[group]
                out[rows] = math.forward(h[rows].astype(args[0].dtype), *args).astype(h.dtype)
    return out


def packed_groups(positions, n: int, config: ReftConfig) -> dict[str, np.ndarray]:
    """{group: (K,) bool}: which of one sequence's positions (K,) group g edits in a prompt
    of n tokens (positions ≥ n, decode tokens, are never edited)."""
    prefix, suffix = config.prefix_suffix
    pre, suf = intervention_positions(n, prefix, suffix, rule=config.position_rule)
    sets = {"tied": pre + suf, "prefix": pre, "suffix": suf}
    return {g: np.isin(positions, sets[g]) for g in config.groups}


def _runs(t, n, a):
    """[(start, stop)]: maximal stretches of tokens that continue one sequence."""
    if len(t) == 0:
        return []
    breaks = (t[1:] != t[:-1] + 1) | (n[1:] != n[:-1]) | (a[1:] != a[:-1])  # (T − 1,)
    edges = [0, *(np.flatnonzero(breaks) + 1).tolist(), len(t)]
    return list(zip(edges[:-1], edges[1:]))


def adapter_plan(k: int, entry, kinds=KINDS):
    """(config, math, {group: [arrays]}) of adapters[k] = (config, params), or None for None;
    kinds maps config.intervention to its math (the mirror passes its own)."""
    if entry is None:
        return None
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
        raise ValueError(f"adapters[{k}] must be a (ReftConfig, params) pair or None, got "
                         f"{type(entry).__name__}")
    config, params = entry
    try:
        math, ordered = group_params(config, params, kinds)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"adapters[{k}]: {exc}") from None
    return config, math, ordered


def _check_packed_h(h) -> np.ndarray:
    if not isinstance(h, np.ndarray) or h.dtype not in (np.float32, np.float64) or h.ndim != 2:
        raise ValueError(f"h must be a (tokens, hidden) float32/float64 numpy array, got "
                         f"{type(h).__name__} {getattr(h, 'dtype', '')} {getattr(h, 'shape', '')}")
    return h


def _check_token_ints(tokens: int, **arrays):
    """Each array as (T,) int64; positions ≥ 0, prompt_lengths ≥ 1, adapter_ids ≥ −1."""
    low = {"positions": 0, "prompt_lengths": 1, "adapter_ids": -1}
    out = []
    for name, value in arrays.items():
        x = np.asarray(value)
        if x.shape != (tokens,) or (x.size and x.dtype.kind not in "iu"):
            raise ValueError(f"{name} must be an integer array of shape ({tokens},) (one per token "
                             f"of h), got dtype {x.dtype} and shape {x.shape}")
        x = x.astype(np.int64)
        bad = np.flatnonzero(x < low[name])
        if bad.size:
            raise ValueError(f"token {bad[0]} has {name} {x[bad[0]]}; it must be >= {low[name]}"
                             + (" (-1: no adapter)" if name == "adapter_ids" else ""))
        out.append(x)
    return out


def _check_adapters(adapters, a) -> list:
    adapters = list(adapters)
    if a.size and a.max() >= len(adapters):
        i = int(np.argmax(a >= len(adapters)))
        raise ValueError(f"token {i} has adapter_id {a[i]}, but only {len(adapters)} adapters were given")
    return adapters
