"""The `minireft` command: `minireft check --backend MODULE` (more subcommands to come).

Each subcommand is a pair of small functions registered once, in SUBCOMMANDS:
`_add_<name>(subparsers)` declares its arguments and returns its parser, and
`_run_<name>(args)` runs it and returns the exit status. A subcommand that needs
torch imports it inside its `_run_` function, so `minireft check --backend minireft`
runs on a NumPy-only install.

Exit status: 0 success, 1 a check failed, 2 a usage error (bad arguments, a backend
that cannot be imported, a filter that matches no case).
"""

from __future__ import annotations

import argparse
import os
import sys

from minireft import SPEC_VERSION, __version__

# ---------------------------------------------------------------------------- check


def _add_check(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "check",
        help="run the conformance corpus against a backend",
        description="Run every case of the conformance corpus (reference/cases) against a "
                    "backend in float64 and float32, and print case, worst absolute and "
                    "relative error, tolerance and verdict. Exit status 1 when a case fails.",
    )
    p.add_argument("--backend", required=True, metavar="MODULE",
                   help="the backend: an importable module (minireft, minireft.torch, mypkg.reft), "
                        "MODULE:ATTRIBUTE for an object inside one, or a path to a .py file")
    p.add_argument("--dtype", choices=("float64", "float32", "both"), default="both",
                   help="the dtype(s) to run every case in (default: both)")
    p.add_argument("--filter", action="append", default=[], metavar="SUBSTR",
                   help="run only the cases whose name contains SUBSTR (repeatable: any of them)")
    p.add_argument("--xfail", metavar="FILE",
                   help="known gaps, one per line: CASE_GLOB [float32|float64]  # reason; "
                        "a listed case that fails is XFAIL and does not fail the run")
    p.add_argument("--cases", metavar="DIR", help="the corpus folder (default: reference/cases)")
    p.add_argument("--adapter", choices=("auto", "numpy", "torch"), default="auto",
                   help="how arrays reach the backend (default: the backend's to_backend / "
                        "to_numpy, else torch tensors if it uses torch, else NumPy arrays)")
    p.add_argument("--device", help="put the torch adapter's tensors on this device (e.g. cuda)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="list only the checks that did not pass, then the summary")
    return p


def _run_check(args) -> int:
    from minireft import conformance

    if os.getcwd() not in sys.path:  # a backend module in the current folder, as `python -m` finds it
        sys.path.insert(0, os.getcwd())
    dtypes = conformance.DTYPES if args.dtype == "both" else (args.dtype,)
    try:
        report = conformance.run(args.backend, cases_dir=args.cases, dtypes=dtypes,
                                 filters=args.filter, xfail=args.xfail or (),
                                 adapter=args.adapter, device=args.device)
    except (ImportError, AttributeError, OSError, LookupError, ValueError) as exc:
        print(f"minireft check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(conformance.format_report(report, only_problems=args.quiet))
    return 1 if report.failed else 0


# ---------------------------------------------------------------------------- registry

SUBCOMMANDS = {
    "check": (_add_check, _run_check),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minireft",
        description="Representation Finetuning (ReFT): an executable NumPy spec, a PyTorch "
                    "mirror, a conformance corpus.")
    parser.add_argument("--version", action="version",
                        version=f"minireft {__version__} (spec {SPEC_VERSION})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, run in SUBCOMMANDS.values():
        add(sub).set_defaults(func=run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
