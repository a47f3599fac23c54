"""The corpus on disk: a folder per case, meta.json and one .npy per array."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minireft
from minireft.conformance.compare import DTYPES


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
    """The corpus the package carries (minireft/_corpus, in a wheel install), else
    reference/cases beside the package (a source checkout or an editable install)."""
    package = Path(minireft.__file__).resolve().parent
    packaged = package / "_corpus"
    if (packaged / "index.json").is_file():
        return packaged
    return package.parent / "reference" / "cases"


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


def check_spec_version(cases) -> list[str]:
    """Warnings for cases written for another spec version than this package's."""
    versions = sorted({c.meta.get("spec_version") for c in cases} - {minireft.SPEC_VERSION})
    return [f"warning: corpus spec version {v} differs from minireft.SPEC_VERSION "
            f"{minireft.SPEC_VERSION}" for v in versions]
