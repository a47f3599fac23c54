"""scripts/bench_chunks.py runs: --quick on a tiny random Llama prints a table for every overhead
(no timing asserted), and the overhead it sets is put back."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_quick_prints_every_overhead_and_restores_the_constant(capsys):
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_chunks.py"
    spec = importlib.util.spec_from_file_location("_bench_chunks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from minireft.hf import batching

    before = batching.CHUNK_OVERHEAD_TOKENS
    assert module.main(["--quick", "--threads", "1"]) == 0
    assert batching.CHUNK_OVERHEAD_TOKENS == before
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\S.*?) \| ([\d.]+) \| ([\d.]+)x \|$", out, flags=re.M)
    assert [r[0] for r in rows] == ["0", "16", "64", "256", "whole batch"]
    assert rows[-1][2] == "1.000"  # the whole batch is the reference
