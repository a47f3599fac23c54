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


def test_crosscheck_table_flags_a_disagreement():
    crosscheck = load_script()
    import numpy as np

    table = crosscheck.Table()
    table.add("deliberately wrong", "float64", np.array([1.0, 2.0]), np.array([1.0, 2.1]), 1e-12)
    assert table.print() == 1
