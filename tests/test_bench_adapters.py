"""scripts/bench_adapters.py runs: --quick on a tiny random Llama prints the ratio line and
finds the mixed batch's greedy tokens equal to the grouped runs' (no timing asserted)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_adapters.py"
    spec = importlib.util.spec_from_file_location("bench_adapters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_cycle_through_the_adapters_and_the_bare_model(bench):
    names = bench.row_names(["a", "b"], 7)
    assert names == ["a", "b", None, "a", "b", None, "a"]


def test_adapters_differ_and_fit_a_shallow_model(bench):
    configs = bench.adapter_configs(4, 4)
    assert len({(c.layers, c.rank, c.positions, c.intervention, c.tied) for c in configs.values()}) == 4
    assert all(0 <= layer < 4 for c in configs.values() for layer in c.layers)
    with pytest.raises(ValueError, match="--adapters"):
        bench.adapter_configs(4, 5)


def test_quick_run_prints_the_ratio_and_equal_tokens(bench, capsys):
    assert bench.main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    ratio = re.search(r"mixed / grouped tokens/s: prefill (\d+\.\d+)x, generate (\d+\.\d+)x", out)
    assert ratio and all(float(x) > 0 for x in ratio.groups()), out
    assert "greedy tokens of the mixed batch equal the grouped runs': yes" in out, out
    assert "16 rows (sentiment 4, direft 3, paper 3, noreft 3, bare 3)" in out, out
