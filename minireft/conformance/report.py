"""The checker's printed report: one row per (case, dtype), then every failure."""

from __future__ import annotations

import numpy as np

import minireft
from minireft.conformance.runner import Report


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
