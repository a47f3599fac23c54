"""One function per corpus operation: the contract's call, made on any backend."""

from __future__ import annotations

import numpy as np

from minireft.config import ReftConfig
from minireft.conformance.adapters import Adapter, generic_to_numpy

# One function per operation: it calls the backend the way the contract says and
# returns {output name: NumPy array}. `x` holds the case's inputs as NumPy arrays of
# the dtype under test; `put` / `get` are the adapter's to_backend / to_numpy.


def _fn(backend, dotted: str):
    obj = backend
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"the backend has no {dotted}") from None
    return obj


def _intervention(kind: str, params: tuple[str, ...]):
    """(forward runner, vjp runner) for an intervention whose call is kind.forward(h, *params)
    and kind.vjp(h, *params, dout) -> (dh, d-params in the same order)."""
    outputs = ("dh", *(f"d{p}" for p in params))

    def forward(be, x, kw, put, get):
        return {"out": get(_fn(be, f"{kind}.forward")(*(put(x[k]) for k in ("h", *params))))}

    def vjp(be, x, kw, put, get):
        res = _fn(be, f"{kind}.vjp")(*(put(x[k]) for k in ("h", *params, "dout")))
        return {k: get(v) for k, v in zip(outputs, _n_tuple(res, len(outputs), f"{kind}.vjp"))}

    return forward, vjp


# Every intervention (SPEC §2, §3, §3a) is called the same way, with its own parameters.
INTERVENTIONS = {"loreft": ("R", "W", "b"), "direft": ("W1", "W2", "b"), "noreft": ("W1", "W2", "b"),
                 "consreft": ("R", "b"), "lobireft": ("R", "b"), "ortho_direft": ("R", "W", "b")}


def _stiefel(name, second):
    def run(be, x, kw, put, get):
        return {"out": get(_fn(be, f"stiefel.{name}")(put(x["R"]), put(x[second])))}

    return run


def _orthonormality_error(be, x, kw, put, get):
    return {"out": get(_fn(be, "stiefel.orthonormality_error")(put(x["R"])))}


def _trajectory(be, x, kw, put, get, step_fn, first, stacked, extra):
    """state=None, then `steps` calls of step_fn feeding grads[k]; returns every iterate."""
    param, state, iterates = put(x[first]), None, []
    for k in range(int(kw["steps"])):
        param, state = _n_tuple(
            step_fn(param, put(x["grads"][k]), state, lr=kw["lr"], betas=tuple(kw["betas"]),
                    eps=kw["eps"], **{e: kw[e] for e in extra}), 2, "the optimizer step")
        iterates.append(get(param))
    return {
        stacked: np.stack(iterates),
        "exp_avg": get(state["exp_avg"]),
        "exp_avg_sq": get(state["exp_avg_sq"]),
        "step": np.asarray(int(get(state["step"]))),
    }


def _adamw_trajectory(be, x, kw, put, get):
    return _trajectory(be, x, kw, put, get, _fn(be, "optim.adamw_step"), "param", "params",
                       ("weight_decay",))


def _riemannian_trajectory(be, x, kw, put, get):
    return _trajectory(be, x, kw, put, get, _fn(be, "optim.riemannian_adam_step"), "R", "Rs",
                       ("retraction",))


def _positions_table(be, x, kw, put, get):
    """One call per row (n, prefix, suffix), with Python ints; lists padded with -1. A case with
    kwargs["rule"] passes it on as rule=...; one without calls fn(n, p, s) (the paper's rule)."""
    fn = _fn(be, "positions.intervention_positions")
    rule = {"rule": kw["rule"]} if "rule" in kw else {}
    rows = []
    for n, p, s in zip(x["n"].tolist(), x["prefix"].tolist(), x["suffix"].tolist()):
        pre, suf = _n_tuple(fn(n, p, s, **rule), 2, "positions.intervention_positions")
        rows.append(([int(i) for i in get(pre).reshape(-1)], [int(i) for i in get(suf).reshape(-1)]))
    out = {}
    for j, key in enumerate(("prefix_positions", "suffix_positions")):
        width = max(int(x["prefix" if j == 0 else "suffix"].max()), 1)
        table = np.full((len(rows), width), -1, dtype=np.int64)  # (K, max p or s)
        for i, row in enumerate(rows):
            if len(row[j]) > width:
                raise ValueError(f"row {i}: {len(row[j])} {key} for at most {width} asked")
            table[i, : len(row[j])] = row[j]
        out[key] = table
    return out


def _edit_args(x, kw, put):
    """(h, attention_mask, prompt_lengths or None, ReftConfig, {group: {param: array}}):
    parameters are the inputs named "{group}.{param}"; a case without prompt_lengths passes None."""
    config = ReftConfig.from_dict(kw["config"])
    params = {g: {p: put(x[f"{g}.{p}"]) for p in config.param_names} for g in config.groups}
    lengths = put(x["prompt_lengths"]) if "prompt_lengths" in x else None
    return put(x["h"]), put(x["attention_mask"]), lengths, config, params


def _edit(be, x, kw, put, get):
    return {"out": get(_fn(be, "edit")(*_edit_args(x, kw, put)))}


def _edit_vjp(be, x, kw, put, get):
    *args, config, params = _edit_args(x, kw, put)
    dh, grads = _n_tuple(_fn(be, "edit_vjp")(*args, config, params, put(x["dout"])), 2, "edit_vjp")
    return {"dh": get(dh), **{f"grad.{g}.{p}": get(grads[g][p]) for g in params for p in params[g]}}


def _packed_edit(be, x, kw, put, get):
    """packed_edit(h, positions, prompt_lengths, adapter_ids, adapters): adapter k's parameters
    are the inputs named "a{k}.{group}.{param}"; kwargs["configs"][k] None: k edits no token here."""
    adapters = []
    for k, data in enumerate(kw["configs"]):
        config = None if data is None else ReftConfig.from_dict(data)
        adapters.append(None if config is None else (config, {
            g: {p: put(x[f"a{k}.{g}.{p}"]) for p in config.param_names} for g in config.groups}))
    args = (put(x[k]) for k in ("h", "positions", "prompt_lengths", "adapter_ids"))
    return {"out": get(_fn(be, "packed_edit")(*args, adapters))}


def _n_tuple(res, n, what):
    if not isinstance(res, (tuple, list)) or len(res) != n:
        raise TypeError(f"{what} must return {n} values, got {type(res).__name__}")
    return res


# operation name -> (runner, tolerance kind)
OPERATIONS = {
    **{f"{kind}.{op}": (runner, tol)
       for kind, params in INTERVENTIONS.items()
       for op, runner, tol in zip(("forward", "vjp"), _intervention(kind, params), ("value", "gradient"))},
    "stiefel.project_tangent": (_stiefel("project_tangent", "G"), "value"),
    "stiefel.retract_polar": (_stiefel("retract_polar", "xi"), "retraction"),
    "stiefel.retract_qr": (_stiefel("retract_qr", "xi"), "retraction"),
    "stiefel.orthonormality_error": (_orthonormality_error, "deviation"),
    "optim.adamw_trajectory": (_adamw_trajectory, "trajectory"),
    "optim.riemannian_adam_trajectory": (_riemannian_trajectory, "trajectory"),
    "positions.intervention_positions_table": (_positions_table, "exact"),
    "edit": (_edit, "value"),
    "edit_vjp": (_edit_vjp, "gradient"),
    "packed_edit": (_packed_edit, "value"),
}


def run_operation(backend, operation: str, inputs: dict, kwargs: dict, adapter: Adapter) -> dict:
    """Call `operation` of `backend` on NumPy `inputs`; return NumPy outputs."""
    runner, _ = OPERATIONS[operation]

    def get(x):  # Python numbers and lists, and NumPy values, need no hook
        if isinstance(x, _PLAIN):
            return generic_to_numpy(x)
        return np.array(adapter.to_numpy(x), copy=True)  # a copy: the backend may reuse x in place

    return runner(backend, inputs, kwargs, adapter.to_backend, get)


_PLAIN = (bool, int, float, list, tuple, np.ndarray, np.generic)
