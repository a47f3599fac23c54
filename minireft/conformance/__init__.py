"""Run the conformance corpus (reference/cases) against any backend.

A backend is a module, or any object, exposing the contract's functional names:

    loreft.forward(h, R, W, b)               loreft.vjp(h, R, W, b, dout) -> (dh, dR, dW, db)
    direft.forward(h, W1, W2, b)             direft.vjp(h, W1, W2, b, dout) -> (dh, dW1, dW2, db)
    noreft.forward(h, W1, W2, b)             noreft.vjp(h, W1, W2, b, dout) -> (dh, dW1, dW2, db)
    consreft.forward(h, R, b)                consreft.vjp(h, R, b, dout) -> (dh, dR, db)
    lobireft.forward(h, R, b)                lobireft.vjp(h, R, b, dout) -> (dh, dR, db)
    ortho_direft.forward(h, R, W, b)         ortho_direft.vjp(h, R, W, b, dout) -> (dh, dR, dW, db)
    stiefel.project_tangent(R, G)            stiefel.retract_polar(R, xi)
    stiefel.retract_qr(R, xi)                stiefel.orthonormality_error(R)
    optim.adamw_step(param, grad, state, *, lr, betas, eps, weight_decay) -> (param, state)
    optim.riemannian_adam_step(R, grad, state, *, lr, betas, eps, retraction) -> (R, state)
    positions.intervention_positions(n, prefix, suffix, rule="paper") -> (list, list)   rule: "pyreft" too
    edit(h, attention_mask, prompt_lengths, config, params) -> h'          (B, L, d), the in-model edit
    edit_vjp(h, attention_mask, prompt_lengths, config, params, dout) -> (dh, {group: {param: grad}})
    packed_edit(h, positions, prompt_lengths, adapter_ids, [(config, params) or None]) -> h'
                                             (T, d), the edit on an engine's flat batch

`minireft` (the NumPy spec) is one; `minireft.torch` is another. Arrays cross the
boundary through an adapter (see `resolve_adapter`): `to_backend(np_array)` makes
the backend's array of the same dtype, `to_numpy(x)` brings a result back.

Each case holds float64 inputs and the spec's float64 outputs. The checker runs a
case in float64 and in float32 (inputs cast, expected values kept in float64) and
compares every output array with

    abs_err = max |got − expected|                       (max over elements)
    rel_err = abs_err / max(max |expected|, TINY)          (normwise, in the max norm)
    pass   ⇔  abs_err ≤ atol + rtol · max |expected|

The error is measured against the largest expected entry rather than entry by
entry, because an entry near zero can come from cancellation (h − RᵀR h, say)
and carries an absolute error of the size of the terms that cancelled. Integer
outputs (positions, the optimizer's step count) must match exactly.

The package imports neither torch nor any backend until asked to; the torch

Modules: `compare` (errors, tolerances), `adapters` (arrays in and out, finding a
backend), `operations` (the contract's calls), `cases` (the corpus on disk), `runner`
(running it), `report` (printing it).
"""

from minireft.conformance.adapters import Adapter, generic_to_numpy, load_backend, resolve_adapter
from minireft.conformance.cases import Case, check_spec_version, default_cases_dir, load_cases
from minireft.conformance.compare import DTYPES, TOLERANCE_REASONS, TOLERANCES, Comparison, compare
from minireft.conformance.operations import OPERATIONS, run_operation
from minireft.conformance.report import format_report, format_table
from minireft.conformance.runner import Report, Result, read_xfail, run, run_case

__all__ = [
    "DTYPES", "OPERATIONS", "TOLERANCES", "TOLERANCE_REASONS", "Adapter", "Case", "Comparison",
    "Report", "Result", "check_spec_version", "compare", "default_cases_dir", "format_report",
    "format_table", "generic_to_numpy", "load_backend", "load_cases", "read_xfail",
    "resolve_adapter", "run", "run_case", "run_operation",
]
