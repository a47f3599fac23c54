"""scripts/crosscheck.py runs and passes on a tiny random Llama (the SmolLM2 run is documented in README)."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "crosscheck.py"


def load_script():
    spec = importlib.util.spec_from_file_location("crosscheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crosscheck_passes_on_tiny_model(capsys):
    assert load_script().main(["--trials", "3", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "tiny: layer 1 hidden states vs spec" in out
    assert " 0 failed" in out


def test_crosscheck_judges_with_the_conformance_tolerances(capsys):
    """A float32 relative error of 5e-5 is within the corpus's gradient tolerance (1e-4) and
    outside its value tolerance (1e-5): the table takes both from minireft.conformance."""
    import numpy as np

    from minireft.conformance import TOLERANCES

    assert TOLERANCES["value"]["float32"][0] < 5e-5 < TOLERANCES["gradient"]["float32"][0]
    crosscheck = load_script()
    table = crosscheck.Table()
    expected = np.array([1.0, -2.0])
    got = (expected + np.array([0.0, 1e-4])).astype(np.float32)  # 1e-4 / max|expected| = 5e-5
    table.add("as a gradient", "float32", got, expected, "gradient")
    table.add("as a value", "float32", got, expected, "value")
    assert table.print() == 1
    out = capsys.readouterr().out
    verdicts = {line.split()[2]: line.split()[-1] for line in out.splitlines() if line.startswith("as a ")}
    assert verdicts == {"gradient": "PASS", "value": "FAIL"}
    assert "as a value [float32] out: worst at index (1,)" in out
