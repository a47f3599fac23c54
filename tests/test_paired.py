"""scripts/paired.py: the paired bootstrap interval and McNemar's exact test."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import paired  # noqa: E402


def test_identical_and_opposite_rows_give_degenerate_intervals():
    rows = [True, False, True, True]
    assert paired.paired_bootstrap(rows, rows) == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "n": 4}
    assert paired.paired_bootstrap([True] * 5, [False] * 5) == {"diff": 1.0, "lo": 1.0, "hi": 1.0, "n": 5}


def test_interval_matches_the_normal_approximation_on_many_rows():
    """With n = 2000 rows the bootstrap's 95% interval is close to D ± 1.96·sd(d)/√n."""
    rng = np.random.default_rng(1)
    a, b = rng.random(2000) < 0.7, rng.random(2000) < 0.6
    r = paired.paired_bootstrap(a, b)
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert r["diff"] == pytest.approx(d.mean())
    assert r["lo"] < r["diff"] < r["hi"]
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(half, rel=0.1)


def test_pairing_narrows_the_interval():
    """Rows both methods get right or wrong together carry no information about the
    difference: B = A with 10 rows flipped gives an interval about that many rows wide,
    far narrower than two independent 500-row accuracies would (±0.06)."""
    rng = np.random.default_rng(2)
    a = rng.random(500) < 0.5
    b = a.copy()
    b[:10] = ~b[:10]
    r = paired.paired_bootstrap(a, b)
    assert r["hi"] - r["lo"] < 0.04


def test_mcnemar_exact_p_by_hand():
    """n10 = 8 rows only A gets right, n01 = 2 only B: p = 2·P(Bin(10, ½) ≤ 2)
    = 2·(1 + 10 + 45)/1024 = 0.109375; concordant rows do not count."""
    a = [True] * 8 + [False] * 2 + [True] * 30 + [False] * 5
    b = [False] * 8 + [True] * 2 + [True] * 30 + [False] * 5
    assert paired.mcnemar_p(a, b) == pytest.approx(112 / 1024)
    assert paired.mcnemar_p(a, a) == 1.0
    assert paired.mcnemar_p([True] * 5 + [False] * 5, [False] * 5 + [True] * 5) == 1.0


def test_rows_must_pair():
    with pytest.raises(ValueError, match="the same non-empty rows"):
        paired.paired_bootstrap([True, False], [True])
    with pytest.raises(ValueError, match="the same non-empty rows"):
        paired.paired_bootstrap([], [])
    assert paired.describe([True, True, False], [False, True, False]).startswith("+0.333 [")
