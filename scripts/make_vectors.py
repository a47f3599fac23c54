"""Generate the conformance corpus, reference/cases/, from the NumPy spec in float64.

    python scripts/make_vectors.py [--out reference/cases]

Each case is a folder <name>/ holding meta.json (the operation, its named arguments,
the tolerances and the reason for any override, the spec version) and one .npy per
input and output. Inputs come from a NumPy Generator seeded by the CRC-32 of the
case's name; outputs are the spec's, computed by the very runner the checker uses
(minireft.conformance.run_operation). Rerunning the script on the same machine rewrites
byte-identical files: JSON with sorted keys, C-ordered float64 arrays, nothing time-dependent.

On another CPU, BLAS and LAPACK pick other kernels, which sum in another order, so float64
values may differ in their last bits (measured: at most 55 units in the last place of an
array's largest value between an AVX2 and an AVX-512 machine). The promise, checked by
`--check` and the suite, is `same_corpus`: the same files, JSON and integer arrays byte for
byte, and every float64 value within ULPS = 256 units in the last place of its array's
largest magnitude (5.7e-14 relative to it: 17x inside the checker's float64 tolerance).

    python scripts/make_vectors.py --check   # regenerate into a temporary folder and compare

A case is written once, as a call of `case(...)` in one of the families below.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

import minireft
from minireft import conformance, stiefel

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "reference" / "cases"
NUMPY = conformance.Adapter("numpy", lambda a: a, conformance.generic_to_numpy)

# Hidden sizes and ranks of the grid (r <= d), and the input shapes by name.
DS = (1, 2, 7, 64, 576)
RS = (1, 2, 4, 8)


def shape_of(kind: str, d: int) -> tuple[int, ...]:
    small = d < 576  # keep the d = 576 cases small: the corpus stays under 5 MB
    return {"vec": (d,), "nd": ((5 if small else 3), d), "bnd": ((2, 3, d) if small else (2, 2, d))}[kind]


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


CASES: list[dict] = []


def case(name, operation, inputs, *, description, kwargs=None, dtypes=conformance.DTYPES,
         tolerance=None, seed=None):
    """Register a case. tolerance: {dtype: (rtol, atol, reason)} overriding the default."""
    kind = conformance.OPERATIONS[operation][1]
    tol, reasons = {}, {}
    for dtype in dtypes:
        rtol, atol = conformance.TOLERANCES[kind][dtype]
        reason = conformance.TOLERANCE_REASONS.get(kind, {}).get(dtype)
        if tolerance and dtype in tolerance:
            rtol, atol, reason = tolerance[dtype]
        tol[dtype] = {"atol": float(atol), "rtol": float(rtol)}
        if reason:
            reasons[dtype] = reason
    kwargs = dict(kwargs or {})
    arrays = {k: np.array(v, order="C") for k, v in inputs.items()}  # C order, ndim kept
    outputs = conformance.run_operation(minireft, operation, arrays, kwargs, NUMPY)
    outputs = {k: np.array(v, order="C") for k, v in outputs.items()}
    meta = {
        "name": name,
        "operation": operation,
        "description": description,
        "args": list(arrays),
        "kwargs": kwargs,
        "outputs": list(outputs),
        "shapes": {k: list(v.shape) for k, v in {**arrays, **outputs}.items()},
        "dtype": "int64" if all(v.dtype.kind == "i" for v in arrays.values()) else "float64",
        "dtypes": list(dtypes),
        "tolerance": tol,
        "spec_version": minireft.SPEC_VERSION,
        "generator": "scripts/make_vectors.py",
    }
    if seed is not None:
        meta["seed"] = seed
    if reasons:
        meta["tolerance_reason"] = reasons
    assert name not in {c["meta"]["name"] for c in CASES}, f"duplicate case {name}"
    CASES.append({"meta": meta, "arrays": {**arrays, **outputs}})
    return outputs


# --------------------------------------------------------------------------- LoReFT, DiReFT, the family


def loreft_params(rng, d, r):
    R = stiefel.random_stiefel(r, d, rng)  # (r, d), orthonormal rows
    while 1 < r == d and np.allclose(R, R.T):  # a symmetric R (a 2×2 reflection) would hide
        R = stiefel.random_stiefel(r, d, rng)  # a backend that transposes R; draw again
    W = rng.standard_normal((r, d)) / np.sqrt(d)  # (r, d)
    b = rng.standard_normal(r) / np.sqrt(d)  # (r,)
    return {"R": R, "W": W, "b": b}


def direft_params(rng, d, r):
    W1 = rng.standard_normal((r, d)) / np.sqrt(d)  # (r, d)
    W2 = rng.standard_normal((r, d)) / np.sqrt(d)  # (r, d), no orthogonality
    b = rng.standard_normal(r) / np.sqrt(d)  # (r,)
    return {"W1": W1, "W2": W2, "b": b}


def noreft_params(rng, d, r):
    W1 = rng.standard_normal((r, d)) / np.sqrt(d)  # (r, d)
    W2 = rng.standard_normal((r, d)) / np.sqrt(d)  # (r, d), no orthogonality
    b = rng.standard_normal(r) / np.sqrt(d)  # (r,)
    return {"W1": W1, "W2": W2, "b": b}


def subspace_params(rng, d, r):
    """ConsReFT's and LobiReFT's {R, b}: R as LoReFT's (never symmetric), b ~ N(0, 1), the
    size of the coordinates R h it replaces or shifts."""
    R = loreft_params(rng, d, r)["R"]
    return {"R": R, "b": rng.standard_normal(r)}


PARAMS = {"loreft": loreft_params, "direft": direft_params, "noreft": noreft_params,
          "consreft": subspace_params, "lobireft": subspace_params, "ortho_direft": loreft_params}
FORMULA = {"loreft": "Φ(h) = h + Rᵀ(W h + b − R h)", "direft": "Φ(h) = h + W2ᵀ(W1 h + b)",
           "noreft": "Φ(h) = h + W2ᵀ(W1 h + b − W2 h)", "consreft": "Φ(h) = h + Rᵀ(b − R h)",
           "lobireft": "Φ(h) = h + Rᵀ b", "ortho_direft": "Φ(h) = h + Rᵀ(W h + b), R orthonormal"}


def intervention_case(method, op, d, r, shape, *, scale=1.0, tag="", dtypes=conformance.DTYPES,
                      tolerance=None, note=""):
    """h ~ N(0, 1)·scale and b·scale (Φ is then homogeneous: Φ scales by `scale`); dout ~ N(0, 1)."""
    name = f"{method}_{op}_d{d}_r{r}_{shape}{'_' + tag if tag else ''}"
    seed = seed_of(name)
    rng = np.random.default_rng(seed)
    params = PARAMS[method](rng, d, r)
    h = rng.standard_normal(shape_of(shape, d)) * scale
    params["b"] = params["b"] * scale
    inputs = {"h": h, **params}
    what = "Φ(h)" if op == "forward" else "the VJP (dh, d-params) against dout"
    if op == "vjp":
        inputs["dout"] = rng.standard_normal(h.shape)
    description = f"{method} {op}: {what}, {FORMULA[method]}; d={d}, r={r}, h shape {list(h.shape)}"
    if scale != 1.0:
        description += f"; h and b scaled by {scale:g}, dout unscaled"
    if note:
        description += f"; {note}"
    case(name, f"{method}.{op}", inputs, description=description, seed=seed,
         dtypes=dtypes, tolerance=tolerance)


def intervention_grid():
    for method in ("loreft", "direft"):
        for d in DS:
            ranks = [r for r in RS if r <= d]
            for i, r in enumerate(ranks):
                if d <= 7:  # every shape for the small sizes
                    for op in ("forward", "vjp"):
                        for shape in ("vec", "nd", "bnd"):
                            intervention_case(method, op, d, r, shape)
                else:  # one shape per rank, rotated between forward and vjp
                    intervention_case(method, "forward", d, r, ("vec", "nd", "bnd", "bnd")[i])
                    intervention_case(method, "vjp", d, r, ("nd", "bnd", "vec", "bnd")[i])
        for d in (4, 8):  # r = d (with r = d = 1, 2 above): LoReFT is then Φ(h) = Rᵀ(W h + b)
            for op in ("forward", "vjp"):
                intervention_case(method, op, d, d, "nd", note="r = d")


# (d, r, shape) of the family's cases: the corners d = r = 1 and r = d, a batch, and SmolLM2's
# d at rank 1 on one vector (the corpus has a 5 MB budget).
FAMILY_GRID = ((1, 1, "vec"), (2, 1, "bnd"), (7, 2, "nd"), (7, 7, "nd"), (64, 8, "bnd"), (576, 1, "vec"))


def family_grid():
    """NoReFT, ConsReFT, LobiReFT, orthogonal DiReFT (SPEC §3a): forward and VJP on FAMILY_GRID."""
    for method in ("noreft", "consreft", "lobireft", "ortho_direft"):
        for d, r, shape in FAMILY_GRID:
            intervention_case(method, "forward", d, r, shape)
            # ConsReFT at r = d is Φ(h) = Rᵀ b: dh = 0 in exact arithmetic, and its rounding
            # noise cannot be compared relatively; r < d covers every term of its VJP.
            if not (method == "consreft" and r == d):
                intervention_case(method, "vjp", d, r, shape)


def family_identity():
    """The family's identity parameters give Φ(h) = h exactly (ConsReFT has none, SPEC §3a.2)."""
    zero = {"noreft": lambda p: {"W1": p["W2"].copy(), "b": np.zeros_like(p["b"])},
            "lobireft": lambda p: {"b": np.zeros_like(p["b"])},
            "ortho_direft": lambda p: {"W": np.zeros_like(p["W"]), "b": np.zeros_like(p["b"])}}
    what = {"noreft": "W1 = W2, b = 0", "lobireft": "b = 0", "ortho_direft": "W = 0, b = 0"}
    for method, identity in zero.items():
        name = f"{method}_forward_identity_d64_r8_bnd"
        rng = np.random.default_rng(seed_of(name))
        params = PARAMS[method](rng, 64, 8)
        params.update(identity(params))
        h = rng.standard_normal((2, 3, 64))
        out = case(name, f"{method}.forward", {"h": h, **params}, seed=seed_of(name),
                   description=f"{method} identity init: {what[method]} gives Φ(h) = h exactly")
        assert np.array_equal(out["out"], h), name


def magnitudes():
    """Tiny and huge hidden states; in float64 only, magnitudes float32 cannot hold."""
    for method in ("loreft", "direft"):
        for op in ("forward", "vjp"):
            intervention_case(method, op, 64, 4, "nd", scale=1e-30, tag="tiny")
            intervention_case(method, op, 64, 4, "nd", scale=1e30, tag="huge")
    for op in ("forward", "vjp"):
        intervention_case("loreft", op, 64, 4, "nd", scale=1e-150, tag="tiny_f64",
                          dtypes=("float64",), note="float64 only (1e-150 underflows float32)")
        intervention_case("loreft", op, 64, 4, "nd", scale=1e150, tag="huge_f64",
                          dtypes=("float64",), note="float64 only (1e150 overflows float32)")


def identity_init():
    """LoReFT with W = R, b = 0 is the identity: Φ(h) = h, exactly; DiReFT with W1 = 0, b = 0 too."""
    for d, r, shape in ((64, 8, "bnd"), (576, 4, "nd")):
        name = f"loreft_forward_identity_d{d}_r{r}_{shape}"
        rng = np.random.default_rng(seed_of(name))
        R = stiefel.random_stiefel(r, d, rng)  # (r, d)
        h = rng.standard_normal(shape_of(shape, d))
        out = case(name, "loreft.forward", {"h": h, "R": R, "W": R.copy(), "b": np.zeros(r)},
                   seed=seed_of(name),
                   description=f"identity init: W = R, b = 0 gives Φ(h) = h exactly; d={d}, r={r}")
        assert np.array_equal(out["out"], h), name
    name = "loreft_vjp_identity_d64_r4_nd"
    rng = np.random.default_rng(seed_of(name))
    R = stiefel.random_stiefel(4, 64, rng)  # (4, 64)
    h = rng.standard_normal((5, 64))
    dout = rng.standard_normal(h.shape)
    out = case(name, "loreft.vjp", {"h": h, "R": R, "W": R.copy(), "b": np.zeros(4), "dout": dout},
               seed=seed_of(name),
               description="VJP at the identity init W = R, b = 0: Δ = 0, so dR = −dW and dh = dout")
    assert np.array_equal(out["dR"], -out["dW"]) and np.array_equal(out["dh"], dout), name
    name = "direft_forward_identity_d64_r8_bnd"
    rng = np.random.default_rng(seed_of(name))
    h = rng.standard_normal((2, 3, 64))
    W2 = stiefel.random_stiefel(8, 64, rng)  # (8, 64)
    out = case(name, "direft.forward", {"h": h, "W1": np.zeros((8, 64)), "W2": W2, "b": np.zeros(8)},
               seed=seed_of(name), description="DiReFT identity init: W1 = 0, b = 0 gives Φ(h) = h exactly")
    assert np.array_equal(out["out"], h), name


# --------------------------------------------------------------------------- Stiefel


def sign_fix_matters(R, xi) -> bool:
    """True when NumPy's QR of (R + ξ)ᵀ has a negative diagonal entry in T, so a QR
    retraction without the sign fix would return a different matrix."""
    return bool(np.any(np.diag(np.linalg.qr((R + xi).T)[1]) < 0))


STIEFEL_PAIRS = ((1, 1), (2, 2), (7, 2), (8, 8), (64, 4), (576, 8))
STEPS = {
    "zero": "ξ = 0: the retraction must return R itself",
    "small": "ξ = 1e-3 · P_R(G), a small tangent step",
    "unit": "ξ = P_R(G) / ‖P_R(G)‖_F, a tangent step of Frobenius norm 1",
    "raw": "ξ = 0.3 · G, not tangent: a retraction accepts any ξ near 0",
}


def make_xi(kind, R, G):
    if kind == "zero":
        return np.zeros_like(R)
    if kind == "small":
        return 1e-3 * stiefel.project_tangent(R, G)
    if kind == "unit":
        P = stiefel.project_tangent(R, G)
        return P / max(np.linalg.norm(P), 1e-300)
    return 0.3 * G


def stiefel_cases():
    for d, r in STIEFEL_PAIRS:
        name = f"stiefel_project_tangent_d{d}_r{r}"
        rng = np.random.default_rng(seed_of(name))
        R = stiefel.random_stiefel(r, d, rng)  # (r, d)
        case(name, "stiefel.project_tangent", {"R": R, "G": rng.standard_normal((r, d))},
             seed=seed_of(name), description=f"P_R(G) = G − sym(G Rᵀ) R; d={d}, r={r}")
    plan = ((1, 1, "zero"), (2, 2, "small"), (7, 2, "unit"), (8, 8, "raw"), (64, 4, "small"),
            (64, 4, "zero"), (576, 8, "unit"))
    for retraction in ("polar", "qr"):
        for d, r, kind in plan:
            name = f"stiefel_retract_{retraction}_d{d}_r{r}_{kind}"
            for attempt in range(64):
                seed = seed_of(f"{name}/{attempt}")
                rng = np.random.default_rng(seed)
                R = stiefel.random_stiefel(r, d, rng)  # (r, d)
                xi = make_xi(kind, R, rng.standard_normal((r, d)))
                # QR cases are drawn so that the sign fix matters (NumPy's LAPACK QR gives
                # diag(T) < 0 somewhere); a retraction without it fails every one of them.
                if retraction == "polar" or sign_fix_matters(R, xi):
                    break
            formula = ("U Vᵀ from the thin SVD R + ξ = U Σ Vᵀ" if retraction == "polar" else
                       "Qᵀ from (R + ξ)ᵀ = Q T with diag(T) > 0")
            drawn = "; drawn so that LAPACK's unsigned QR differs" if retraction == "qr" else ""
            case(name, f"stiefel.retract_{retraction}", {"R": R, "xi": xi}, seed=seed,
                 description=f"retract_{retraction}(R, ξ) = {formula}; {STEPS[kind]}; d={d}, r={r}{drawn}")
    for d, r, eps in ((7, 2, 1e-3), (64, 8, 1e-6), (576, 4, 0.0)):
        name = f"stiefel_orthonormality_error_d{d}_r{r}"
        rng = np.random.default_rng(seed_of(name))
        R = stiefel.random_stiefel(r, d, rng) + eps * rng.standard_normal((r, d))
        case(name, "stiefel.orthonormality_error", {"R": R}, seed=seed_of(name),
             description=f"max |R Rᵀ − I| of a point of St({r}, {d}) plus {eps:g} · N(0, 1) noise")


# --------------------------------------------------------------------------- optimizer

STEPS_PER_TRAJECTORY = 5


def adamw_cases():
    plan = (
        ("W_d64_r8", (8, 64), {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}),
        ("W_d64_r8_wd", (8, 64), {"lr": 5e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}),
        ("b_r4", (4,), {"lr": 1e-1, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.0}),
        ("W_d576_r4_wd", (4, 576), {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}),
    )
    for tag, shape, hyper in plan:
        name = f"optim_adamw_{tag}"
        rng = np.random.default_rng(seed_of(name))
        param = rng.standard_normal(shape) / np.sqrt(shape[-1])
        grads = rng.standard_normal((STEPS_PER_TRAJECTORY, *shape))  # (steps, *shape)
        case(name, "optim.adamw_trajectory", {"param": param, "grads": grads},
             kwargs={"steps": STEPS_PER_TRAJECTORY, **hyper}, seed=seed_of(name),
             description=f"{STEPS_PER_TRAJECTORY} AdamW steps from state=None, step k fed grads[k]; "
                         f"outputs: the parameter after every step, the final state")


def unsigned_qr_trajectory(R, grads, kw):
    """The trajectory a QR retraction without the sign fix would take (for the seed choice)."""
    def retract(R, xi):
        return np.linalg.qr((R + xi).T)[0].T

    saved = minireft.optim.RETRACTIONS["qr"]
    minireft.optim.RETRACTIONS["qr"] = retract
    try:
        return conformance.run_operation(minireft, "optim.riemannian_adam_trajectory",
                                         {"R": R, "grads": grads}, kw, NUMPY)["Rs"]
    finally:
        minireft.optim.RETRACTIONS["qr"] = saved


def riemannian_cases():
    plan = (("d64_r4", 4, 64, 1e-2), ("d7_r7", 7, 7, 1e-1), ("d2_r1", 1, 2, 0.5), ("d576_r4", 4, 576, 1e-3))
    for retraction in ("polar", "qr"):
        for tag, r, d, lr in plan:
            name = f"optim_riemannian_adam_{retraction}_{tag}"
            kw = {"steps": STEPS_PER_TRAJECTORY, "lr": lr, "betas": [0.9, 0.999], "eps": 1e-8,
                  "retraction": retraction}
            for attempt in range(64):
                seed = seed_of(f"{name}/{attempt}")
                rng = np.random.default_rng(seed)
                R = stiefel.random_stiefel(r, d, rng)  # (r, d)
                grads = rng.standard_normal((STEPS_PER_TRAJECTORY, r, d))  # (steps, r, d)
                if retraction == "polar":
                    break
                expected = conformance.run_operation(minireft, "optim.riemannian_adam_trajectory",
                                                     {"R": R, "grads": grads}, kw, NUMPY)["Rs"]
                if np.max(np.abs(unsigned_qr_trajectory(R, grads, kw) - expected)) > 1e-2:
                    break
            case(name, "optim.riemannian_adam_trajectory", {"R": R, "grads": grads}, kwargs=kw,
                 seed=seed,
                 description=f"{STEPS_PER_TRAJECTORY} Riemannian Adam steps on St({r}, {d}) with the "
                             f"{retraction} retraction from state=None, step k fed the Euclidean "
                             f"gradient grads[k]; outputs: R after every step, the final state"
                             + ("; drawn so that LAPACK's unsigned QR diverges" if retraction == "qr" else ""))


# --------------------------------------------------------------------------- positions


def positions_cases():
    rows = [(n, p, s) for n in range(1, 17) for p in (0, 1, 2, 3, 5, 7) for s in (0, 1, 2, 3, 5, 7)]
    case("positions_grid", "positions.intervention_positions_table", table(rows),
         description="intervention_positions(n, p, s) for n in 1..16, p, s in {0, 1, 2, 3, 5, 7}; "
                     "row i of prefix_positions / suffix_positions lists the positions, padded with -1")
    rows = [(n, p, s) for n in (1, 2, 3, 14, 99, 100, 101, 200, 512)
            for p, s in ((7, 7), (100, 100), (1, 0), (0, 1), (50, 3))]
    case("positions_long", "positions.intervention_positions_table", table(rows),
         description="intervention_positions for long prompts and large p, s (the n < p + s clamp); "
                     "row i of prefix_positions / suffix_positions lists the positions, padded with -1")
    rows = [(n, p, s) for n in range(1, 11) for p in (0, 1, 3, 7) for s in (0, 1, 3, 7)]
    case("positions_grid_pyreft_rule", "positions.intervention_positions_table", table(rows),
         kwargs={"rule": "pyreft"},
         description="intervention_positions(n, p, s, rule='pyreft') for n in 1..10, p, s in {0, 1, 3, 7}: "
                     "p' = min(p, ⌊n/2⌋), s' = min(s, ⌊n/2⌋) always (SPEC §6); row i of prefix_positions / "
                     "suffix_positions lists the positions, padded with -1")


def table(rows):
    n, p, s = (np.array(col, dtype=np.int64) for col in zip(*rows))  # each (K,)
    return {"n": n, "prefix": p, "suffix": s}


# --------------------------------------------------------------------------- the in-model edit


def edit_mask(counts, length, sides) -> np.ndarray:
    """(B, L) int64 attention mask: row b has counts[b] real tokens, padded on sides[b]."""
    mask = np.zeros((len(counts), length), dtype=np.int64)
    for b, (count, side) in enumerate(zip(counts, sides)):
        start = length - count if side == "left" else 0
        mask[b, start:start + count] = 1
    return mask


def edit_case(name, *, method, positions, tied, d, r, counts, length, sides, prompts=None, vjp=False,
              identity=False, note="", position_rule="paper"):
    """One `edit` (or `edit_vjp`) case: h ~ N(0, 1) of shape (B, L, d), one parameter set per group."""
    config = minireft.ReftConfig(layers=(0,), rank=r, positions=positions, tied=tied, intervention=method,
                                 position_rule=position_rule)
    seed = seed_of(name)
    rng = np.random.default_rng(seed)
    mask = edit_mask(counts, length, sides)
    h = rng.standard_normal((len(counts), length, d))
    inputs = {"h": h, "attention_mask": mask}
    if prompts is not None:
        inputs["prompt_lengths"] = np.array(prompts, dtype=np.int64)
    for group in config.groups:
        params = PARAMS[method](rng, d, r)
        if identity:  # LoReFT W = R, b = 0: Φ(h) = h
            params["W"], params["b"] = params["R"].copy(), np.zeros(r)
        inputs.update({f"{group}.{p}": v for p, v in params.items()})
    if vjp:
        inputs["dout"] = rng.standard_normal(h.shape)
    rows = "; ".join(f"row {b}: {c} real tokens, {side} padded"
                     + (f", prompt {prompts[b]}" if prompts is not None else "")
                     for b, (c, side) in enumerate(zip(counts, sides)))
    what = "the VJP (dh, grad.{group}.{param}) of edit against dout" if vjp else "edit(h, ...)"
    rule = "" if position_rule == "paper" else f" (rule {position_rule})"
    description = (f"{what}: {method}, positions {positions}{rule}, {'tied' if tied else 'untied'} "
                   f"(groups {', '.join(config.groups)}); h (B, L, d) = {list(h.shape)}, r={r}; {rows}"
                   + ("" if prompts is not None else "; prompt_lengths None (all real tokens)")
                   + (f"; {note}" if note else ""))
    out = case(name, "edit_vjp" if vjp else "edit", inputs, kwargs={"config": config.to_dict()},
               seed=seed, description=description)
    if identity:
        assert np.array_equal(out["out"], h), name


SHORT = (1, 2, 3, 5, 8)  # real tokens per row: short prompts (n < p + s) and one that fits


def edit_cases():
    for method in ("loreft", "direft"):
        for tied in (False, True):
            for side in ("left", "right"):
                tag = f"{method}_{'tied' if tied else 'untied'}_f2l3_{side}"
                edit_case(f"edit_{tag}", method=method, positions="f2+l3", tied=tied, d=16, r=4,
                          counts=SHORT, length=9, sides=[side] * 5)
                edit_case(f"edit_{tag}_prompts", method=method, positions="f2+l3", tied=tied, d=16,
                          r=4, counts=(4, 6, 9, 7), length=9, sides=[side] * 4, prompts=(1, 3, 9, 5),
                          note="tokens after the prompt (a completion) are never edited")
        edit_case(f"edit_vjp_{method}_untied_f2l3_mixed", method=method, positions="f2+l3", tied=False,
                  d=16, r=4, counts=SHORT, length=9, sides=("left", "right") * 2 + ("left",), vjp=True)
        edit_case(f"edit_vjp_{method}_tied_f1l2_prompts", method=method, positions="f1+l2", tied=True,
                  d=7, r=2, counts=(3, 6, 2), length=6, sides=("right", "left", "left"), prompts=(2, 4, 1),
                  vjp=True)
    edit_case("edit_loreft_untied_f0l3", method="loreft", positions="f0+l3", tied=False, d=8, r=2,
              counts=(1, 2, 4, 6), length=7, sides=("left", "right", "left", "right"),
              note="one-sided: f0+l3 untied has the single group suffix")
    edit_case("edit_direft_untied_f3", method="direft", positions="f3", tied=False, d=8, r=2,
              counts=(1, 2, 5), length=5, sides=("left", "right", "left"),
              note="prefix only: a 1-token prompt edits nothing (p' = min(3, ⌊1/2⌋) = 0)")
    edit_case("edit_loreft_untied_f7l7_pyreft_differs", method="loreft", positions="f7+l7", tied=False,
              d=8, r=2, counts=(1, 3, 10, 20), length=20, sides=("left", "left", "right", "left"),
              note="short prompts where pyreft edits differently (SPEC §6): n = 1 edits its one token")
    edit_case("edit_loreft_untied_f7l7_pyreft_rule", method="loreft", positions="f7+l7", tied=False,
              d=8, r=2, counts=(1, 3, 10, 20), length=20, sides=("left", "left", "right", "left"),
              position_rule="pyreft",
              note="position_rule pyreft: n = 1 edits nothing, n = 3 edits [0] and [2], n = 10 edits 0…4 and 5…9")
    edit_case("edit_vjp_direft_tied_f2l3_pyreft_rule", method="direft", positions="f2+l3", tied=True,
              d=7, r=2, counts=(1, 4, 6), length=6, sides=("right", "left", "left"), prompts=(1, 4, 5),
              vjp=True, position_rule="pyreft",
              note="position_rule pyreft: s' = min(3, ⌊n/2⌋), so a 5-token prompt edits [0, 1] and [3, 4]")
    edit_case("edit_loreft_untied_f7l7_d576", method="loreft", positions="f7+l7", tied=False, d=576, r=4,
              counts=(16, 11), length=16, sides=("left", "right"), note="SmolLM2's hidden size")
    edit_case("edit_vjp_loreft_untied_f2l2_all_short", method="loreft", positions="f2+l2", tied=False,
              d=8, r=2, counts=(1, 1), length=3, sides=("left", "right"), vjp=True,
              note="every prompt has 1 token: the prefix group edits nothing and gets zero gradients")
    for method in ("noreft", "consreft", "lobireft", "ortho_direft"):
        edit_case(f"edit_{method}_untied_f2l3_mixed", method=method, positions="f2+l3", tied=False,
                  d=16, r=4, counts=SHORT, length=9, sides=("left", "right") * 2 + ("left",))
        edit_case(f"edit_vjp_{method}_tied_f1l2_prompts", method=method, positions="f1+l2", tied=True,
                  d=7, r=2, counts=(3, 6, 2), length=6, sides=("right", "left", "left"), prompts=(2, 4, 1),
                  vjp=True)
    edit_case("edit_loreft_tied_f2l2_identity", method="loreft", positions="f2+l2", tied=True, d=16, r=4,
              counts=SHORT, length=9, sides=("left", "right") * 2 + ("left",), identity=True,
              note="identity init W = R, b = 0: out = h exactly")


# --------------------------------------------------------------------------- the packed edit


def packed_case(name, *, adapters, d, counts, prompts, ids, chunks=None, first=None, note=""):
    """One `packed_edit` case: sequence j (counts[j] tokens, prompt prompts[j], adapter ids[j])
    as one flat run; chunks[j] lists where sequence j is cut, its pieces interleaved
    round-robin with the others' (an engine's chunked prefill); first[j] is the position of
    sequence j's first token here (0: the whole prompt is in this run). adapters: [(method, positions,
    tied, r, rule) or None]. Unchunked, the spec's output must equal `edit` of the padded rows."""
    configs = [None if a is None else minireft.ReftConfig(layers=(0,), rank=a[3], positions=a[1], tied=a[2],
                                                           intervention=a[0], position_rule=a[4])
               for a in adapters]
    seed = seed_of(name)
    rng = np.random.default_rng(seed)
    hs = [rng.standard_normal((c, d)) for c in counts]  # each (counts[j], d)
    pieces = [[(j, lo, hi) for lo, hi in zip([0, *cuts], [*cuts, counts[j]])]
              for j, cuts in enumerate(chunks or [[] for _ in counts])]
    rows = [(j, t) for k in range(max(map(len, pieces))) for piece in pieces if k < len(piece)
            for j, lo, hi in [piece[k]] for t in range(lo, hi)]
    first = first or [0] * len(counts)
    inputs = {"h": np.stack([hs[j][t] for j, t in rows]),  # (T, d)
              "positions": np.array([first[j] + t for j, t in rows], dtype=np.int64),
              "prompt_lengths": np.array([prompts[j] for j, _ in rows], dtype=np.int64),
              "adapter_ids": np.array([ids[j] for j, _ in rows], dtype=np.int64)}
    for k, config in enumerate(configs):
        for group in config.groups if config else ():
            inputs.update({f"a{k}.{group}.{p}": v for p, v in PARAMS[config.intervention](rng, d, config.rank).items()})
    seqs = "; ".join(f"sequence {j}: positions {f}..{f + c - 1}, prompt {p}, adapter {a}"
                     + (f", cut at {chunks[j]}" if chunks and chunks[j] else "")
                     for j, (c, p, a, f) in enumerate(zip(counts, prompts, ids, first)))
    kinds = "; ".join(f"adapter {k}: " + ("edits no token of this layer" if c is None else
                      f"{c.intervention} {c.positions} {'tied' if c.tied else 'untied'}, r={c.rank}"
                      + ("" if c.position_rule == "paper" else f", rule {c.position_rule}"))
                      for k, c in enumerate(configs))
    description = (f"packed_edit(h, positions, prompt_lengths, adapter_ids, adapters): h (T, d) = "
                   f"{list(inputs['h'].shape)}, one flat run; {kinds}; {seqs}; adapter -1: none"
                   + (f"; {note}" if note else ""))
    out = case(name, "packed_edit", inputs, kwargs={"configs": [c and c.to_dict() for c in configs]},
               seed=seed, description=description)
    if not any(first) and not chunks:
        _assert_padded_equal(out["out"], rows, hs, prompts, ids, configs, inputs)
    decode = inputs["positions"] >= inputs["prompt_lengths"]  # (T,)
    assert np.array_equal(out["out"][decode], inputs["h"][decode]), f"{name}: a decode token was edited"


def _assert_padded_equal(out, rows, hs, prompts, ids, configs, inputs):
    """The packed output equals `edit` of each sequence alone (a padded batch of one), bit for bit."""
    for j, h in enumerate(hs):
        got = out[[i for i, (s, _) in enumerate(rows) if s == j]]
        want, config = h, ids[j] >= 0 and configs[ids[j]]
        if config:
            params = {g: {p: inputs[f"a{ids[j]}.{g}.{p}"] for p in config.param_names} for g in config.groups}
            want = minireft.edit(h[None], np.ones((1, len(h)), dtype=np.int64), np.array([prompts[j]]),
                                 config, params)[0]
        assert np.array_equal(got, want), f"sequence {j}"


def packed_edit_cases():
    loreft_untied = ("loreft", "f2+l3", False, 4, "paper")
    direft_tied = ("direft", "f1+l2", True, 2, "paper")
    mixed = dict(counts=(9, 3, 6, 1, 12, 5), prompts=(7, 3, 4, 1, 12, 2), ids=(0, 1, -1, 0, 1, 0))
    packed_case("packed_edit_two_adapters_mixed", adapters=[loreft_untied, direft_tied], d=16, **mixed,
                note="a whole prefill batch: prompts shorter than p + s, generated tokens after them "
                     "(t >= n, never edited), a sequence without adapter; equals edit of each row")
    packed_case("packed_edit_two_adapters_chunked", adapters=[loreft_untied, direft_tied], d=16,
                **mixed, chunks=[[2, 5], [], [3], [], [1, 4, 10], [1]],
                note="the same sequences cut in chunks and interleaved: the same tokens edited")
    packed_case("packed_edit_one_token_prompts", adapters=[loreft_untied, direft_tied], d=16,
                counts=(1, 1, 1), prompts=(1, 1, 1), ids=(0, 1, -1),
                note="one token per sequence at t = 0 < n = 1: a 1-token prompt edits its token")
    packed_case("packed_edit_decode_step", adapters=[loreft_untied, direft_tied], d=16,
                counts=(1, 1, 1, 1), prompts=(5, 2, 9, 3), ids=(0, 1, 0, 1), first=(5, 3, 9, 7),
                note="a decode step: one generated token per sequence (t >= n), none edited: out = h")
    packed_case("packed_edit_last_chunk", adapters=[loreft_untied], d=16, counts=(4, 3), prompts=(9, 6),
                ids=(0, 0), first=(5, 3),
                note="the last chunk of two prompts (positions 5..8 of 9, 3..5 of 6): only their suffix edited")
    packed_case("packed_edit_f7l7", adapters=[("loreft", "f7+l7", False, 4, "paper")], d=16,
                counts=(16, 5, 20), prompts=(16, 5, 14), ids=(0, 0, 0),
                note="the default positions: 5 < 7 + 7 edits 0..1 and 2..4")
    packed_case("packed_edit_pyreft_rule_and_absent_layer",
                adapters=[None, ("loreft", "f7+l7", False, 2, "pyreft"), ("direft", "l3", False, 2, "paper")],
                d=8, counts=(1, 3, 10, 4, 2), prompts=(1, 3, 10, 4, 2), ids=(1, 1, 1, 0, 2),
                note="adapter 0 edits no token of this layer; pyreft rule: n = 1 edits nothing, n = 3 [0] and [2]")
    for method in ("noreft", "consreft", "lobireft", "ortho_direft"):
        packed_case(f"packed_edit_{method}_tied_f1l2", adapters=[(method, "f1+l2", True, 2, "paper")], d=7,
                    counts=(3, 6, 2), prompts=(2, 4, 1), ids=(0, 0, 0))


# --------------------------------------------------------------------------- writing


def build() -> list[dict]:
    CASES.clear()
    intervention_grid()
    magnitudes()
    identity_init()
    family_grid()
    family_identity()
    stiefel_cases()
    adamw_cases()
    riemannian_cases()
    positions_cases()
    edit_cases()
    packed_edit_cases()
    return list(CASES)


def write(cases: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*/meta.json"):  # a case renamed or dropped leaves no folder behind
        shutil.rmtree(stale.parent)
    for c in cases:
        folder = out / c["meta"]["name"]
        folder.mkdir()
        (folder / "meta.json").write_text(dumps(c["meta"]), encoding="utf-8")
        for key, array in c["arrays"].items():
            np.save(folder / f"{key}.npy", array, allow_pickle=False)
    index = {
        "spec_version": minireft.SPEC_VERSION,
        "generator": "scripts/make_vectors.py",
        "count": len(cases),
        "cases": [{"name": c["meta"]["name"], "operation": c["meta"]["operation"]} for c in cases],
    }
    (out / "index.json").write_text(dumps(index), encoding="utf-8")


def dumps(obj) -> str:
    """JSON with sorted keys, two-space indents, and lists or dicts of scalars on one line."""
    return _json(obj, 0) + "\n"


def _json(obj, depth: int) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    flat = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    if len(flat) <= 100 and not any(isinstance(v, (dict, list)) for v in values):
        return flat
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {_json(obj[k], depth + 1)}" for k in sorted(obj)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        return "[\n" + ",\n".join(inner + _json(x, depth + 1) for x in obj) + "\n" + pad + "]"
    return flat


# --------------------------------------------------------------------------- the promise

# BLAS and LAPACK choose kernels by CPU, and a kernel fixes its own order of summation, so a
# regenerated float64 value may differ from the stored one by a few units in the last place.
ULPS = 256
# Outputs whose exact value is zero (max|RRᵀ − I| for an orthonormal R) are pure rounding
# residue: they are measured against the scale of the case's inputs instead of their own.
RESIDUE_OPERATIONS = frozenset({"stiefel.orthonormality_error"})


def ulps_apart(new: np.ndarray, old: np.ndarray, scale: float) -> float:
    """max |new − old| / spacing(scale): the distance in units in the last place of scale."""
    if old.size == 0:
        return 0.0
    return float(np.max(np.abs(new - old)) / np.spacing(max(scale, np.finfo(np.float64).tiny)))


def same_corpus(stored: Path, regenerated: Path, ulps: float = ULPS) -> tuple[list[str], float]:
    """Whether `regenerated` keeps the corpus's promise against `stored`: (problems, worst ulps).

    The same file names; every JSON file and every integer array byte for byte; every float64
    array of the same shape with |new − old| <= ulps · spacing(scale) elementwise, where
    scale = max|old| over the array (over the case's inputs for RESIDUE_OPERATIONS' outputs).
    """
    ours, theirs = _files(regenerated), _files(stored)
    if ours != theirs:
        return [f"files differ: {sorted(map(str, ours ^ theirs))[:10]}"], 0.0
    problems, worst = [], 0.0
    for rel in sorted(theirs):
        new_bytes, old_bytes = (regenerated / rel).read_bytes(), (stored / rel).read_bytes()
        if new_bytes == old_bytes:
            continue
        if rel.suffix != ".npy":
            problems.append(f"{rel}: differs (JSON must regenerate byte for byte)")
            continue
        new, old = np.load(regenerated / rel), np.load(stored / rel)
        if new.dtype != old.dtype or new.shape != old.shape or old.dtype.kind != "f":
            problems.append(f"{rel}: {new.dtype}{new.shape} against {old.dtype}{old.shape}"
                            + (" (integer arrays must regenerate byte for byte)" if old.dtype.kind != "f" else ""))
            continue
        distance = ulps_apart(new, old, _scale(stored, rel, old))
        worst = max(worst, distance)
        if distance > ulps:
            index = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(new - old))), old.shape))
            problems.append(f"{rel}: {distance:.1f} ulps apart at index {index} (promise: {ulps}): "
                            f"regenerated {float(new[index])!r}, stored {float(old[index])!r}")
    return problems, worst


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def _scale(stored: Path, rel: Path, old: np.ndarray) -> float:
    meta = json.loads((stored / rel.parent / "meta.json").read_text(encoding="utf-8"))
    if meta["operation"] in RESIDUE_OPERATIONS and rel.stem in meta["outputs"]:
        return max(float(np.max(np.abs(np.load(stored / rel.parent / f"{a}.npy")))) for a in meta["args"])
    return float(np.max(np.abs(old))) if old.size else 0.0


def check(stored: Path) -> int:
    """Regenerate into a temporary folder and compare with `stored` (same_corpus)."""
    with tempfile.TemporaryDirectory() as tmp:
        write(build(), Path(tmp))
        problems, worst = same_corpus(stored, Path(tmp))
    for line in problems:
        print(line)
    print(f"{'FAIL' if problems else 'ok'}: worst float64 difference {worst:.1f} ulps of its array's "
          f"scale (promise: {ULPS})")
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (reference/cases)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing: regenerate into a temporary folder and compare with --out")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    cases = build()
    write(cases, args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {len(cases)} cases, {size / 1e6:.2f} MB, to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
