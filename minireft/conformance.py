"""Run the conformance corpus (reference/cases) against any backend.

A backend is a module, or any object, exposing the contract's functional names:

    loreft.forward(h, R, W, b)               loreft.vjp(h, R, W, b, dout) -> (dh, dR, dW, db)
    direft.forward(h, W1, W2, b)             direft.vjp(h, W1, W2, b, dout) -> (dh, dW1, dW2, db)
    stiefel.project_tangent(R, G)            stiefel.retract_polar(R, xi)
    stiefel.retract_qr(R, xi)                stiefel.orthonormality_error(R)
    optim.adamw_step(param, grad, state, *, lr, betas, eps, weight_decay) -> (param, state)
    optim.riemannian_adam_step(R, grad, state, *, lr, betas, eps, retraction) -> (R, state)
    positions.intervention_positions(n, prefix, suffix) -> (list, list)

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

This module imports neither torch nor any backend until asked to; the torch
adapter imports torch only when it is used.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import minireft

DTYPES = ("float64", "float32")
TINY = np.finfo(np.float64).tiny  # guards rel_err against an all-zero expected value

# The default tolerance of each kind of operation: (rtol, atol) per dtype, and the
# reason where a kind departs from the base policy (float64 ≤ 1e-12 relative;
# float32 ≤ 1e-5 for values, ≤ 1e-4 for gradients). A case records the tolerance it
# uses in its meta.json, and the reason under "tolerance_reason". The error model: an
# output built from sums of k products carries a relative error of about √k·ε
# (ε = 2.2e-16 in float64, 6.0e-8 in float32), plus, in float32, the rounding of the
# float64 inputs; √(576·12)·6e-8 ≈ 5e-6 leaves the float32 value tolerance a margin.
TOLERANCES = {
    # Φ(h), P_R(G): a few matmuls.
    "value": {"float64": (1e-12, 0.0), "float32": (1e-5, 0.0)},
    # VJPs: sums over the N = b·n rows as well as over d.
    "gradient": {"float64": (1e-12, 0.0), "float32": (1e-4, 0.0)},
    # Retractions: one SVD or QR of a well-conditioned R + ξ.
    "retraction": {"float64": (1e-12, 0.0), "float32": (1e-5, 0.0)},
    "deviation": {"float64": (0.0, 1e-12), "float32": (0.0, 1e-5)},
    "trajectory": {"float64": (1e-10, 0.0), "float32": (1e-4, 0.0)},
    "exact": {"float64": (0.0, 0.0), "float32": (0.0, 0.0)},
}
TOLERANCE_REASONS = {
    "deviation": {
        dtype: "orthonormality_error is a deviation from I, whose scale is 1, and is near 0: "
               "the tolerance is absolute (DESIGN: <= 1e-12 in float64, <= 1e-5 in float32); "
               "R Rᵀ itself carries a rounding error of about √d·ε"
        for dtype in DTYPES
    },
    "trajectory": {
        "float64": "five steps compound: each step's rounding (an SVD or QR, a projection) moves "
                   "the point where the next gradient is projected; and Adam's per-entry "
                   "m̂/(sqrt(v̂) + ε) gives an entry whose gradient sits at the rounding level "
                   "of the others a step of up to lr in an arbitrary direction",
        "float32": "five steps compound as in float64, at ε = 6e-8: an entry of the projected "
                   "gradient within float32 rounding of zero can take a step of up to lr of "
                   "either sign, so trajectories get the gradient tolerance, 1e-4, not the "
                   "value tolerance 1e-5",
    },
}
# --------------------------------------------------------------------------- adapters


@dataclass
class Adapter:
    """How arrays cross into a backend and back.

    to_backend(a): a is a NumPy array of the dtype under test; return the backend's array.
    to_numpy(x):   x is an array the backend returned; return a NumPy array. Python
                   numbers and lists, and NumPy values, never reach it.
    """

    name: str
    to_backend: object
    to_numpy: object


def generic_to_numpy(x) -> np.ndarray:
    """A backend result as a fresh NumPy array: torch-like objects by .detach().cpu().numpy(),
    anything else by np.asarray (JAX, CuPy's __array__, Python scalars and lists)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.array(x, copy=True)


def _torch_adapter(device: str | None = None) -> Adapter:
    import torch  # only when a torch backend is checked

    def to_backend(a: np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(device) if device is not None else t

    return Adapter(f"torch ({device or 'cpu'})", to_backend, generic_to_numpy)


def _uses_torch(backend) -> bool:
    """True when the backend's modules hold a reference to an already imported torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    for part in (backend, *(getattr(backend, n, None) for n in ("loreft", "direft", "stiefel", "optim"))):
        if isinstance(part, types.ModuleType) and any(v is torch for v in vars(part).values()):
            return True
    return False


def resolve_adapter(backend, kind: str = "auto", device: str | None = None) -> Adapter:
    """The adapter for `backend`.

    kind="auto": the backend's own `to_backend` / `to_numpy` attributes where it defines
    them (either or both); otherwise torch tensors if the backend's modules use torch,
    else NumPy arrays passed through. Results always come back through `to_numpy` if
    defined, else `generic_to_numpy`. kind="numpy" or "torch" forces one; `device`
    (e.g. "cuda") puts the torch adapter's tensors on that device.
    """
    if kind not in ("auto", "numpy", "torch"):
        raise ValueError(f"adapter must be 'auto', 'numpy' or 'torch', got {kind!r}")
    if device is not None and kind == "numpy":
        raise ValueError("a device is meaningful only for the torch adapter")
    if kind == "torch" or device is not None:
        return _torch_adapter(device)
    if kind == "numpy":
        return Adapter("numpy", lambda a: a, generic_to_numpy)
    to_backend = getattr(backend, "to_backend", None)
    to_numpy = getattr(backend, "to_numpy", None)
    if callable(to_backend):
        back = to_numpy if callable(to_numpy) else generic_to_numpy
        return Adapter("backend's to_backend/to_numpy", to_backend, back)
    if _uses_torch(backend):
        return _torch_adapter()
    return Adapter("numpy", lambda a: a, to_numpy if callable(to_numpy) else generic_to_numpy)


def load_backend(spec):
    """A backend from "package.module", "package.module:attribute", a path to a .py
    file, or a module / object passed as is."""
    if not isinstance(spec, str):
        return spec
    if spec.endswith(".py"):
        return _load_file(spec)
    module_name, _, attribute = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if module_name.endswith(".py"):
        obj = _load_file(module_name)
    else:
        obj = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


def _load_file(path) -> types.ModuleType:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backend file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[path.stem] = module
    module_spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- operations
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


def _loreft_forward(be, x, kw, put, get):
    out = _fn(be, "loreft.forward")(*(put(x[k]) for k in ("h", "R", "W", "b")))
    return {"out": get(out)}


def _loreft_vjp(be, x, kw, put, get):
    res = _fn(be, "loreft.vjp")(*(put(x[k]) for k in ("h", "R", "W", "b", "dout")))
    return {k: get(v) for k, v in zip(("dh", "dR", "dW", "db"), _n_tuple(res, 4, "loreft.vjp"))}


def _direft_forward(be, x, kw, put, get):
    out = _fn(be, "direft.forward")(*(put(x[k]) for k in ("h", "W1", "W2", "b")))
    return {"out": get(out)}


def _direft_vjp(be, x, kw, put, get):
    res = _fn(be, "direft.vjp")(*(put(x[k]) for k in ("h", "W1", "W2", "b", "dout")))
    return {k: get(v) for k, v in zip(("dh", "dW1", "dW2", "db"), _n_tuple(res, 4, "direft.vjp"))}


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
    """One call per row (n, prefix, suffix), with Python ints; lists padded with -1."""
    fn = _fn(be, "positions.intervention_positions")
    rows = []
    for n, p, s in zip(x["n"].tolist(), x["prefix"].tolist(), x["suffix"].tolist()):
        pre, suf = _n_tuple(fn(n, p, s), 2, "positions.intervention_positions")
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


def _n_tuple(res, n, what):
    if not isinstance(res, (tuple, list)) or len(res) != n:
        raise TypeError(f"{what} must return {n} values, got {type(res).__name__}")
    return res


# operation name -> (runner, tolerance kind)
OPERATIONS = {
    "loreft.forward": (_loreft_forward, "value"),
    "loreft.vjp": (_loreft_vjp, "gradient"),
    "direft.forward": (_direft_forward, "value"),
    "direft.vjp": (_direft_vjp, "gradient"),
    "stiefel.project_tangent": (_stiefel("project_tangent", "G"), "value"),
    "stiefel.retract_polar": (_stiefel("retract_polar", "xi"), "retraction"),
    "stiefel.retract_qr": (_stiefel("retract_qr", "xi"), "retraction"),
    "stiefel.orthonormality_error": (_orthonormality_error, "deviation"),
    "optim.adamw_trajectory": (_adamw_trajectory, "trajectory"),
    "optim.riemannian_adam_trajectory": (_riemannian_trajectory, "trajectory"),
    "positions.intervention_positions_table": (_positions_table, "exact"),
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


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    path: Path
    meta: dict

    @property
    def dtypes(self) -> list[str]:
        return list(self.meta.get("dtypes", DTYPES))

    def arrays(self, names) -> dict:
        return {k: np.load(self.path / f"{k}.npy", allow_pickle=False) for k in names}

    def inputs(self) -> dict:
        return self.arrays(self.meta["args"])

    def expected(self) -> dict:
        return self.arrays(self.meta["outputs"])

    def tolerance(self, dtype: str) -> tuple[float, float]:
        tol = self.meta["tolerance"][dtype]
        return float(tol["rtol"]), float(tol["atol"])


def default_cases_dir() -> Path:
    """reference/cases beside the package (a source checkout or an editable install)."""
    return Path(minireft.__file__).resolve().parent.parent / "reference" / "cases"


def load_cases(cases_dir=None, filters=()) -> list[Case]:
    """The cases of `cases_dir` in index order, keeping those whose name contains any of
    `filters` (all when empty)."""
    cases_dir = Path(cases_dir) if cases_dir is not None else default_cases_dir()
    if not cases_dir.is_dir():
        raise FileNotFoundError(f"no conformance corpus at {cases_dir}; pass --cases DIR")
    index = cases_dir / "index.json"
    if index.is_file():
        names = [c["name"] for c in json.loads(index.read_text(encoding="utf-8"))["cases"]]
    else:
        names = sorted(p.parent.name for p in cases_dir.glob("*/meta.json"))
    cases = []
    for name in names:
        if filters and not any(f in name for f in filters):
            continue
        meta = json.loads((cases_dir / name / "meta.json").read_text(encoding="utf-8"))
        cases.append(Case(name, cases_dir / name, meta))
    return cases


# --------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """One output of one case: its worst element and the verdict."""

    output: str
    ok: bool
    abs_err: float
    rel_err: float
    rtol: float
    atol: float
    index: tuple = ()
    got: object = None
    expected: object = None
    note: str = ""

    def describe(self, case: str, dtype: str) -> str:
        where = f"worst at index {self.index}: got {self.got!r}, expected {self.expected!r}; "
        if self.note:
            where = f"{self.note}; "
        return (f"{case} [{dtype}] {self.output}: {where}abs err {self.abs_err:.3e}, "
                f"rel err {self.rel_err:.3e}; tolerance rtol {self.rtol:g}, atol {self.atol:g}")


def compare(output: str, got: np.ndarray, expected: np.ndarray, rtol: float, atol: float,
            dtype: str | None = None) -> Comparison:
    """abs_err ≤ atol + rtol·max|expected|, reporting the worst element (exact for integers)."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        return Comparison(output, False, np.inf, np.inf, rtol, atol,
                          note=f"shape {got.shape}, expected {expected.shape}")
    if expected.dtype.kind in "iub":
        rtol = atol = 0.0
    elif dtype is not None and got.ndim > 0 and got.dtype != np.dtype(dtype):
        return Comparison(output, False, np.inf, np.inf, rtol, atol,
                          note=f"dtype {got.dtype}, expected {dtype} (results keep the inputs' dtype)")
    if got.size == 0:
        return Comparison(output, True, 0.0, 0.0, rtol, atol)
    exp = expected.astype(np.float64)
    diff = np.atleast_1d(np.abs(got.astype(np.float64) - exp))  # 0-d results too
    diff[~np.isfinite(diff)] = np.inf  # NaN from the backend counts as an infinite error
    flat = int(np.argmax(diff))
    index = tuple(int(i) for i in np.unravel_index(flat, expected.shape))
    abs_err = float(diff[flat] if diff.ndim == 1 else diff.flat[flat])
    scale = float(np.max(np.abs(exp)))
    rel_err = abs_err / max(scale, TINY)
    ok = abs_err <= atol + rtol * scale
    return Comparison(output, ok, abs_err, rel_err, rtol, atol, index,
                      got.flat[flat].item(), expected.flat[flat].item())


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    case: str
    dtype: str
    verdict: str  # PASS, FAIL, ERROR, XFAIL (failed, expected to) or XPASS (passed, expected to fail)
    rtol: float
    atol: float
    comparisons: list = field(default_factory=list)
    error: str = ""
    xfail_reason: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in ("FAIL", "ERROR")

    @property
    def abs_err(self) -> float:
        return max((c.abs_err for c in self.comparisons), default=np.nan)

    @property
    def rel_err(self) -> float:
        return max((c.rel_err for c in self.comparisons), default=np.nan)

    def messages(self) -> list[str]:
        if self.error:
            return [f"{self.case} [{self.dtype}]: {self.error}"]
        return [c.describe(self.case, self.dtype) for c in self.comparisons if not c.ok]


def run_case(backend, case: Case, dtype: str, adapter: Adapter) -> Result:
    """Run one case in `dtype` (its float inputs cast to it) and compare every output."""
    if dtype not in case.dtypes:
        raise ValueError(f"case {case.name} applies to {case.dtypes} only, not {dtype}")
    rtol, atol = case.tolerance(dtype)
    inputs = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in case.inputs().items()}
    try:
        got = run_operation(backend, case.meta["operation"], inputs, case.meta.get("kwargs", {}), adapter)
    except Exception as exc:  # noqa: BLE001 (any exception of the backend fails the case, with its reason)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Result(case.name, dtype, "ERROR", rtol, atol, error=f"{type(exc).__name__}: {message}")
    comparisons = [compare(name, got[name], exp, rtol, atol, dtype)
                   for name, exp in case.expected().items()]
    verdict = "PASS" if all(c.ok for c in comparisons) else "FAIL"
    return Result(case.name, dtype, verdict, rtol, atol, comparisons)


def read_xfail(path) -> list[tuple[str, str | None, str]]:
    """Known gaps, one per line: CASE_GLOB [float32|float64]  # reason.
    Blank lines and lines starting with # are ignored."""
    entries = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        text, _, reason = line.partition("#")
        fields = text.split()
        if not fields:
            continue
        if len(fields) > 2 or (len(fields) == 2 and fields[1] not in DTYPES):
            raise ValueError(f"{path}:{lineno}: expected 'CASE_GLOB [float32|float64]  # reason', "
                             f"got {line.strip()!r}")
        entries.append((fields[0], fields[1] if len(fields) == 2 else None, reason.strip()))
    return entries


def _xfail_reason(entries, name: str, dtype: str) -> str | None:
    for pattern, only, reason in entries:
        if fnmatch.fnmatchcase(name, pattern) and only in (None, dtype):
            return reason or "listed in the xfail file"
    return None


@dataclass
class Report:
    backend: str
    adapter: str
    results: list
    seconds: float
    skipped: int = 0  # (case, dtype) pairs a case does not apply to
    warnings: list = field(default_factory=list)

    @property
    def failed(self) -> list:
        return [r for r in self.results if r.failed]

    @property
    def ok(self) -> bool:
        return not self.failed

    def counts(self) -> dict:
        counts = {}
        for r in self.results:
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
        return counts


def run(backend, cases_dir=None, dtypes=DTYPES, filters=(), xfail=(), adapter="auto",
        device=None) -> Report:
    """Run the corpus against `backend` (a module, an object, or a name for load_backend)."""
    name = backend if isinstance(backend, str) else getattr(backend, "__name__", type(backend).__name__)
    backend = load_backend(backend)
    adapter = adapter if isinstance(adapter, Adapter) else resolve_adapter(backend, adapter, device)
    cases = load_cases(cases_dir, filters)
    if not cases:
        raise LookupError(f"no case matches the filter {list(filters)}")
    xfail = read_xfail(xfail) if isinstance(xfail, (str, Path)) else list(xfail)
    start, results, skipped = time.perf_counter(), [], 0
    for case in cases:
        for dtype in dtypes:
            if dtype not in case.dtypes:
                skipped += 1
                continue
            result = run_case(backend, case, dtype, adapter)
            reason = _xfail_reason(xfail, case.name, dtype)
            if reason is not None:
                result.xfail_reason = reason
                result.verdict = "XFAIL" if result.failed else "XPASS"
            results.append(result)
    return Report(name, adapter.name, results, time.perf_counter() - start, skipped,
                  check_spec_version(cases))


# --------------------------------------------------------------------------- printing


def _tolerance_text(rtol: float, atol: float) -> str:
    if rtol and atol:
        return f"rtol {rtol:.0e} + atol {atol:.0e}"
    if atol:
        return f"atol {atol:.0e}"
    return f"rtol {rtol:.0e}" if rtol else "exact"


def _err_text(x: float) -> str:
    return "-" if np.isnan(x) else ("inf" if np.isinf(x) else f"{x:.2e}")


def format_table(results, only_problems: bool = False) -> str:
    """case | dtype | max abs err | max rel err | tolerance | verdict, one row per (case, dtype)."""
    rows = [(r.case, r.dtype, _err_text(r.abs_err), _err_text(r.rel_err),
             _tolerance_text(r.rtol, r.atol), r.verdict)
            for r in results if not only_problems or r.verdict != "PASS"]
    header = ("case", "dtype", "max abs err", "max rel err", "tolerance", "verdict")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header).rstrip(), line.format(*("-" * w for w in widths))]
    out += [line.format(*row).rstrip() for row in rows]
    return "\n".join(out)


def format_report(report: Report, only_problems: bool = False) -> str:
    counts = report.counts()
    out = [f"backend {report.backend} (arrays: {report.adapter}); spec version {minireft.SPEC_VERSION}",
           *report.warnings, ""]
    if not only_problems or any(r.verdict != "PASS" for r in report.results):
        out.append(format_table(report.results, only_problems))
    details = [m for r in report.results if r.failed for m in r.messages()]
    if details:
        out += ["", "failures:"] + [f"  {m}" for m in details]
    known = [f"{m}  [xfail: {r.xfail_reason}]" for r in report.results if r.verdict == "XFAIL"
             for m in r.messages()]
    if known:
        out += ["", "known failures (listed in the xfail file):"] + [f"  {m}" for m in known]
    xpass = [r for r in report.results if r.verdict == "XPASS"]
    if xpass:
        out += ["", "expected to fail but passed (remove from the xfail file):"]
        out += [f"  {r.case} [{r.dtype}]" for r in xpass]
    summary = ", ".join(f"{counts[v]} {v.lower()}" for v in ("PASS", "FAIL", "ERROR", "XFAIL", "XPASS")
                        if v in counts)
    skipped = f"; {report.skipped} not applicable to the dtype" if report.skipped else ""
    out += ["", f"{len(report.results)} checks: {summary}{skipped} in {report.seconds:.2f} s"]
    return "\n".join(out)


def check_spec_version(cases) -> list[str]:
    """Warnings for cases written for another spec version than this package's."""
    versions = sorted({c.meta.get("spec_version") for c in cases} - {minireft.SPEC_VERSION})
    return [f"warning: corpus spec version {v} differs from minireft.SPEC_VERSION "
            f"{minireft.SPEC_VERSION}" for v in versions]
