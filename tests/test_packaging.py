"""The wheel: it carries every module and the conformance corpus, and an installed copy finds
the corpus without --cases.

The wheel is built through setuptools' PEP 517 hook (what `pip install .` calls), from a copy
of the sources in a temporary folder, so the build leaves nothing in the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "reference" / "cases"
CORPUS_IN_WHEEL = "minireft/_corpus"  # where pyproject.toml maps reference/cases


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "minireft", src / "minireft", ignore=skip)
    shutil.copytree(CASES_DIR, src / "reference" / "cases")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", build, str(dist)], cwd=src, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dist / proc.stdout.strip().splitlines()[-1]


def test_wheel_carries_the_corpus_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as z:
        inside = {n[len(CORPUS_IN_WHEEL) + 1:]: n for n in z.namelist() if n.startswith(CORPUS_IN_WHEEL + "/")}
        stored = {p.relative_to(CASES_DIR).as_posix() for p in CASES_DIR.rglob("*") if p.is_file()}
        assert set(inside) == stored, f"differ: {sorted(set(inside) ^ stored)[:10]}"
        differ = [n for n in sorted(stored) if z.read(inside[n]) != (CASES_DIR / n).read_bytes()]
    assert not differ, f"{len(differ)} corpus file(s) differ in the wheel, e.g. {differ[:5]}"


def test_wheel_carries_every_module(wheel):
    """pyproject.toml lists the packages by hand: a new subpackage must be added there."""
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "minireft").rglob("*.py")}
    with zipfile.ZipFile(wheel) as z:
        missing = modules - set(z.namelist())
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {sorted(missing)}"


def test_installed_package_finds_its_corpus_without_cases(wheel, tmp_path):
    """The wheel unpacked is what `pip install .` puts in site-packages; run from elsewhere."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import minireft, minireft.cli, minireft.conformance as c; print(minireft.__file__); "
            "print(c.default_cases_dir()); "
            "raise SystemExit(minireft.cli.main(['check', '--backend', 'minireft', '--filter', 'positions']))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    module, cases_dir, *report = proc.stdout.splitlines()
    assert Path(module).is_relative_to(site) and Path(cases_dir) == site / CORPUS_IN_WHEEL
    assert any(" pass" in line and "checks:" in line for line in report), report[-3:]
