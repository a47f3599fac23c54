"""A worked port of the minireft contract to JAX, written from reference/SPEC.md.

    minireft check --backend reference/ports/jax_backend.py          # float64 and float32

Every function is jax.numpy. The VJPs are not written out: `jax.vjp` differentiates the
forward pass, and the corpus compares the result with the spec's analytic VJPs (SPEC.md
§2.2, §3.2, §3a), so this file is also an independent check of those derivations.

dtypes: importing this module turns on `jax_enable_x64`. Without it JAX stores every
float64 array as float32 (silently), and the float64 run would fail on dtype. With it,
float32 inputs stay float32: the Python floats mixed in below (betas, lr, bias
corrections) are weakly typed and take the array's dtype, as SPEC.md §5.1 asks.

The checker finds `to_backend` / `to_numpy` below and passes jax arrays in (a NumPy array
of the dtype under test becomes a jax array of the same dtype) and reads them back.
"""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # float64 stays float64 (see the module docstring)


def to_backend(a: np.ndarray) -> jax.Array:
    """A NumPy array of the dtype under test -> a jax array of the same dtype."""
    return jnp.asarray(a)


def to_numpy(x) -> np.ndarray:
    return np.asarray(x)


# ------------------------------------------------------------- the interventions (§2, §3, §3a)
# Each is a forward pass Φ on the row form H (N, d) = h.reshape(-1, d); leading axes are rows.


def _loreft_forward(h, R, W, b):
    """Φ(h) = h + Rᵀ(W h + b − R h); h (..., d), R and W (r, d), b (r,) -> (..., d)."""
    H = h.reshape(-1, h.shape[-1])  # (N, d)
    delta = H @ W.T + b - H @ R.T  # (N, r)
    return (H + delta @ R).reshape(h.shape)


def _direft_forward(h, W1, W2, b):
    """Φ(h) = h + W2ᵀ(W1 h + b); W1 and W2 (r, d), b (r,)."""
    H = h.reshape(-1, h.shape[-1])
    return (H + (H @ W1.T + b) @ W2).reshape(h.shape)


def _noreft_forward(h, W1, W2, b):
    """Φ(h) = h + W2ᵀ(W1 h + b − W2 h): LoReFT with an unconstrained W2 for R."""
    H = h.reshape(-1, h.shape[-1])
    return (H + (H @ W1.T + b - H @ W2.T) @ W2).reshape(h.shape)


def _consreft_forward(h, R, b):
    """Φ(h) = h + Rᵀ(b − R h): LoReFT with W = 0."""
    H = h.reshape(-1, h.shape[-1])
    return (H + (b - H @ R.T) @ R).reshape(h.shape)


def _lobireft_forward(h, R, b):
    """Φ(h) = h + Rᵀ b: one shift (d,) for every row."""
    H = h.reshape(-1, h.shape[-1])
    return (H + b @ R).reshape(h.shape)


def _ortho_direft_forward(h, R, W, b):
    """Φ(h) = h + Rᵀ(W h + b): DiReFT with W2 = R orthonormal."""
    H = h.reshape(-1, h.shape[-1])
    return (H + (H @ W.T + b) @ R).reshape(h.shape)


# intervention name -> (Φ, its parameters in the contract's order)
INTERVENTIONS = {
    "loreft": (_loreft_forward, ("R", "W", "b")),
    "direft": (_direft_forward, ("W1", "W2", "b")),
    "noreft": (_noreft_forward, ("W1", "W2", "b")),
    "consreft": (_consreft_forward, ("R", "b")),
    "lobireft": (_lobireft_forward, ("R", "b")),
    "ortho_direft": (_ortho_direft_forward, ("R", "W", "b")),
}


def _namespace(forward) -> types.SimpleNamespace:
    """`forward(h, *params)` and `vjp(h, *params, dout) -> (dh, *dparams)`, the pullback of
    dout by jax.vjp. Both jitted: one XLA compilation per shape and dtype instead of one
    per primitive."""

    def vjp(h, *params_and_dout):
        *params, dout = params_and_dout
        _, pullback = jax.vjp(forward, h, *params)
        return pullback(dout)

    return types.SimpleNamespace(forward=jax.jit(forward), vjp=jax.jit(vjp))


loreft, direft, noreft, consreft, lobireft, ortho_direft = (
    _namespace(INTERVENTIONS[name][0])
    for name in ("loreft", "direft", "noreft", "consreft", "lobireft", "ortho_direft"))

# ------------------------------------------------------------------ Stiefel manifold (§4)


def _project_tangent(R, G):
    """P_R(G) = G − sym(G Rᵀ) R; R and G (r, d) -> (r, d)."""
    GRt = G @ R.T  # (r, r)
    return G - 0.5 * (GRt + GRt.T) @ R


def _retract_polar(R, xi):
    """U Vᵀ from the thin SVD R + ξ = U Σ Vᵀ; (r, d) -> (r, d)."""
    U, _, Vt = jnp.linalg.svd(R + xi, full_matrices=False)
    return U @ Vt


def _retract_qr(R, xi):
    """Qᵀ from (R + ξ)ᵀ = Q T with diag(T) > 0 (zero counts as +); (r, d) -> (r, d).

    LAPACK (under jnp.linalg.qr too) leaves diag(T) with either sign, and jnp.sign(0) is 0,
    so the signs are chosen with a comparison, not jnp.sign.
    """
    Q, T = jnp.linalg.qr((R + xi).T)  # Q (d, r), T (r, r)
    signs = jnp.where(jnp.diagonal(T) >= 0, 1, -1).astype(Q.dtype)
    return (Q * signs).T


def _orthonormality_error(R):
    """max |R Rᵀ − I| over the r² entries; R (r, d) -> a 0-d array."""
    return jnp.max(jnp.abs(R @ R.T - jnp.eye(R.shape[0], dtype=R.dtype)))


stiefel = types.SimpleNamespace(
    project_tangent=jax.jit(_project_tangent), retract_polar=jax.jit(_retract_polar),
    retract_qr=jax.jit(_retract_qr), orthonormality_error=jax.jit(_orthonormality_error))
RETRACTIONS = {"polar": stiefel.retract_polar, "qr": stiefel.retract_qr}

# ------------------------------------------------------------------------ optimizer (§5)


def _moments(grad, state, betas):
    """(t, m, v) after one more step from `state` (None: t = 0, m = v = 0)."""
    beta1, beta2 = betas
    if state is None:  # the zero state: t = 0, m = v = 0
        state = {"step": 0, "exp_avg": jnp.zeros_like(grad), "exp_avg_sq": jnp.zeros_like(grad)}
    t = int(state["step"]) + 1
    m = beta1 * state["exp_avg"] + (1 - beta1) * grad
    v = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
    return t, m, v


def _adam_direction(m, v, t, betas, eps):
    """(m / (1 − β1ᵗ)) / (sqrt(v) / sqrt(1 − β2ᵗ) + ε), torch's order; bias corrections
    are Python floats, so the dtype of m and v is kept."""
    beta1, beta2 = betas
    return (m / (1 - beta1**t)) / (jnp.sqrt(v) / (1 - beta2**t) ** 0.5 + eps)


def _adamw_step(param, grad, state, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """torch.optim.AdamW (amsgrad off): decay θ(1 − lr·λ) first, then Adam. -> (θ', state')."""
    param = param * (1 - lr * weight_decay)
    t, m, v = _moments(grad, state, betas)
    param = param - lr * _adam_direction(m, v, t, betas, eps)
    return param, {"step": t, "exp_avg": m, "exp_avg_sq": v}


def _riemannian_adam_step(R, grad, state, *, lr, betas=(0.9, 0.999), eps=1e-8,
                          retraction="polar"):
    """Adam on St(r, d) from the Euclidean gradient: g = P_R(grad); moments of g;
    ξ = −lr·P_R(direction); R' = retract(R, ξ); m ← P_R'(m), v not transported."""
    if retraction not in RETRACTIONS:
        raise ValueError(f"retraction must be one of {sorted(RETRACTIONS)}, got {retraction!r}")
    project = stiefel.project_tangent
    t, m, v = _moments(project(R, grad), state, betas)
    xi = -lr * project(R, _adam_direction(m, v, t, betas, eps))
    R_new = RETRACTIONS[retraction](R, xi)
    return R_new, {"step": t, "exp_avg": project(R_new, m), "exp_avg_sq": v}


optim = types.SimpleNamespace(adamw_step=_adamw_step, riemannian_adam_step=_riemannian_adam_step)

# ------------------------------------------------------------------------ positions (§6)


def _intervention_positions(n: int, prefix: int, suffix: int, rule: str = "paper") -> tuple[list, list]:
    """The first p' and last s' of n real tokens, 0-based; rule "paper": when n < p + s,
    p' = min(p, ⌊n/2⌋) and s' = min(s, ⌈n/2⌉); rule "pyreft": p' = min(p, ⌊n/2⌋) and
    s' = min(s, ⌊n/2⌋) always. Python ints in, two lists out."""
    if n < 1:
        raise ValueError(f"n must be at least 1 (the prompt's real tokens), got {n}")
    if rule == "pyreft":
        prefix, suffix = min(prefix, n // 2), min(suffix, n // 2)
    elif n < prefix + suffix:
        prefix, suffix = min(prefix, n // 2), min(suffix, (n + 1) // 2)
    return list(range(prefix)), list(range(n - suffix, n))


positions = types.SimpleNamespace(intervention_positions=_intervention_positions)

# ---------------------------------------------------------------- the edit in a model (§11)


def _edited_columns(attention_mask, prompt_lengths, config) -> dict:
    """{group: (rows, cols)}, two int arrays of the (b, t) each group edits, row-major.

    The mask decides which positions, and so the shapes that follow: this runs in NumPy on
    concrete values, outside anything jax traces.
    """
    mask = np.asarray(attention_mask)
    if mask.ndim != 2 or not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"attention_mask must be (batch, length) of 0 and 1, got shape {mask.shape}")
    lengths = None if prompt_lengths is None else np.asarray(prompt_lengths)
    prefix, suffix = config.prefix_suffix
    where = {g: ([], []) for g in config.groups}
    for b, row in enumerate(mask):
        real = np.flatnonzero(row)
        if real.size == 0 or real[-1] - real[0] + 1 != real.size:
            raise ValueError(f"row {b} has no real token or a gap in its attention_mask {row.tolist()}")
        n = real.size if lengths is None else int(lengths[b])
        if not 1 <= n <= real.size:
            raise ValueError(f"row {b} has prompt length {n}, not in 1..{real.size} (its real tokens)")
        pre, suf = _intervention_positions(n, prefix, suffix, getattr(config, "position_rule", "paper"))
        chosen = {"tied": pre + suf, "prefix": pre, "suffix": suf}
        for group, (rows, cols) in where.items():
            rows.extend([b] * len(chosen[group]))
            cols.extend(int(real[0]) + t for t in chosen[group])
    return {g: (np.array(r, dtype=np.int64), np.array(c, dtype=np.int64)) for g, (r, c) in where.items()}


@functools.partial(jax.jit, static_argnames="intervention")
def _apply(h, where, intervention, params):
    """h with Φ_g of group g's parameters at its (rows, cols); h (B, L, d). Jitted: one
    compilation per case instead of one per gather and scatter."""
    phi, names = INTERVENTIONS[intervention]
    for group, (rows, cols) in where.items():
        args = [params[group][k] for k in names]
        x = h[rows, cols].astype(args[0].dtype)  # (K, d), edited in the parameters' dtype
        h = h.at[rows, cols].set(phi(x, *args).astype(h.dtype))
    return h


def edit(h, attention_mask, prompt_lengths, config, params):
    """h' = h with Φ_g at group g's edited positions of every row (SPEC.md §11).

    h (B, L, d); attention_mask (B, L) of 0/1; prompt_lengths (B,) or None; config a
    minireft.ReftConfig (read: prefix_suffix, groups, tied, intervention); params
    {group: {param: array}}. Returns (B, L, d) of h's dtype.
    """
    where = _edited_columns(attention_mask, prompt_lengths, config)
    return _apply(h, where, config.intervention, params)


def edit_vjp(h, attention_mask, prompt_lengths, config, params, dout):
    """(dh, grads) of `edit` against dout (B, L, d), by jax.vjp with the positions fixed;
    grads has params' nesting (zeros for a group that edits nothing)."""
    where = _edited_columns(attention_mask, prompt_lengths, config)
    _, pullback = jax.vjp(lambda h, params: _apply(h, where, config.intervention, params), h, params)
    return pullback(dout)


# ---------------------------------------------------------------- the packed edit (§11a)


def packed_edit(h, positions, prompt_lengths, adapter_ids, adapters):
    """h'_i = Φ_{a_i, g}(h_i) where adapter a_i's rule picks t_i < n_i for a prompt of n_i
    tokens (SPEC.md §11a); h (T, d), positions / prompt_lengths / adapter_ids (T,), adapters a
    list of (config, params) or None. Which tokens is decided in NumPy on concrete values, as
    `_edited_columns` does; each (run, group)'s tokens are edited as one block."""
    t, n, a = (np.asarray(x, dtype=np.int64) for x in (positions, prompt_lengths, adapter_ids))
    breaks = np.flatnonzero((t[1:] != t[:-1] + 1) | (n[1:] != n[:-1]) | (a[1:] != a[:-1])) + 1
    for start, stop in zip([0, *breaks.tolist()], [*breaks.tolist(), len(t)]):
        if len(t) == 0 or a[start] < 0 or adapters[a[start]] is None:
            continue
        config, params = adapters[a[start]]
        prefix, suffix = config.prefix_suffix
        pre, suf = _intervention_positions(int(n[start]), prefix, suffix,
                                           getattr(config, "position_rule", "paper"))
        chosen = {"tied": pre + suf, "prefix": pre, "suffix": suf}
        cols = {g: start + np.flatnonzero(np.isin(t[start:stop], chosen[g])) for g in config.groups}
        where = {g: (np.zeros_like(c), c) for g, c in cols.items()}  # row 0 of the batch of one
        h = _apply(h[None], where, config.intervention, params)[0]  # a batch of one row: (1, T, d)
    return h
