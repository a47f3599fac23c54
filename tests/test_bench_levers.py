"""scripts/bench_levers.py: each lever against the defaults of the same seed, pooled over seeds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_levers  # noqa: E402


def _write(root: Path, label: str, hits: list[bool]) -> None:
    folder = root / "val" / label
    folder.mkdir(parents=True)
    row = {"task": "format", "method": "loreft", "params": 10, "accuracy": sum(hits) / len(hits), "hits": hits,
           "n_test": len(hits), "majority": None, "seconds": 2.0}
    (folder / "results.json").write_text(json.dumps([row]))


def test_levers_pair_with_the_defaults_of_their_own_seed(tmp_path):
    """tied beats the defaults on one row of 4 with seed 0 and ties with seed 1: pooled over the
    8 stacked rows, +1/8 = +0.125; a lever run with no defaults of its seed is left out."""
    _write(tmp_path, "defaults_seed0", [True, False, False, True])
    _write(tmp_path, "defaults_seed1", [True, True, False, False])
    _write(tmp_path, "tied_seed0", [True, True, False, True])
    _write(tmp_path, "tied_seed1", [True, True, False, False])
    _write(tmp_path, "rank8_seed2", [True] * 4)
    rows = bench_levers.load(tmp_path)
    assert set(rows) == {("format", lever, s) for lever, s in
                         (("defaults", 0), ("defaults", 1), ("tied", 0), ("tied", 1), ("rank8", 2))}
    text = bench_levers.report(rows)
    tied = next(line for line in text.splitlines() if line.startswith("| tied |"))
    assert "| 0.750 / 0.500 | +0.125 [" in tied
    assert "| rank8 |" not in text and "| defaults | 10 | 0.500 / 0.500 |  |" in text


def test_every_lever_changes_one_setting_of_the_defaults():
    import bench_tasks

    parser = bench_tasks.build_parser()
    assert bench_tasks.candidate_of(parser.parse_args(["--split", "val"])) == {}
    for lever, flags in bench_levers.LEVERS.items():
        candidate = bench_tasks.candidate_of(parser.parse_args(["--split", "val", *flags]))
        assert len(candidate) == (lever != "defaults"), (lever, candidate)
