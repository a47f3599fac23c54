"""Running the corpus against a backend: every case in every dtype, with known gaps."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minireft.conformance.adapters import Adapter, load_backend, resolve_adapter
from minireft.conformance.cases import Case, check_spec_version, load_cases
from minireft.conformance.compare import DTYPES, compare
from minireft.conformance.operations import run_operation


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
