"""README.md and docs/guide.md stay true: their ```python blocks run as written (the guide's
continue README's), and README's counts of the conformance corpus are the corpus's.

The python blocks run in order in one namespace (the later ones say "continuing the Python
example"), in a temporary folder, at tiny sizes. Only two things are swapped, so that what
runs is the README's code and nothing else:
- `load_model` (as minireft.hf and minireft.hf.loading export it) loads a tiny random Llama
  with the tests' character tokenizer (it has a chat template) from a folder, through the real
  load_model, instead of the packaged SmolLM2: the same code path, hidden size 32, and just
  enough blocks for the largest layer index the blocks name;
- minireft.demo.datasets' readers return the MAX_ROWS shortest of the rows asked for (real
  packaged data; short rows because the tokenizer makes one token of each character).
Everything else (train()'s defaults, the Trainer's 64 steps, the saved folders) is as written:
about 35 s on a shared 2-core machine, so the test is marked slow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from minireft.conformance import format_report, load_cases, run

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"  # continues README's python example
CASES = ROOT / "reference" / "cases"
MAX_ROWS = 8  # rows per dataset read in the README's blocks (it asks for up to 256): one batch


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def readme_and_guide_blocks() -> list[str]:
    """README's python blocks, then docs/guide.md's, which continue them."""
    return [b for doc in (README, GUIDE) for b in python_blocks(doc.read_text(encoding="utf-8"))]


def block_names() -> list[str]:
    return [f"{doc.relative_to(ROOT)} python block {i + 1}" for doc in (README, GUIDE)
            for i in range(len(python_blocks(doc.read_text(encoding="utf-8"))))]


def test_python_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\n```bash\nb\n```\n```python\nc = 2\n```\n")
    assert blocks == ["a = 1\n", "c = 2\n"]


# ---------------------------------------------------------------- the corpus's counts


def _counts() -> dict:
    cases = load_cases(CASES)
    n64 = sum("float64" in c.dtypes for c in cases)
    n32 = sum("float32" in c.dtypes for c in cases)
    return {"cases": len(cases), "float64": n64, "float32": n32, "checks": n64 + n32}


def test_the_readme_counts_the_corpus_as_it_is():
    """The corpus's size, the per-dtype counts of the JAX port's run (it passes every case) and
    the checks of a full run, as README states them, come from reference/cases."""
    text = README.read_text(encoding="utf-8")
    n = _counts()
    for phrase in (f"(`reference/cases/`, {n['cases']} cases,", f"conformance corpus: {n['cases']} cases of",
                   f"# float64 {n['float64']}/{n['float64']}, float32 {n['float32']}/{n['float32']}",
                   f"--backend minireft                        # {n['checks']} checks: {n['checks']} pass",
                   f"--backend minireft.torch                  # {n['checks']} checks: {n['checks']} pass"):
        assert phrase in text, f"README.md lacks {phrase!r}: update it to reference/cases ({n})"
    stated = {int(x) for x in re.findall(r"(\d+) cases\b", text)}
    assert stated == {n["cases"]}, f"README.md states {sorted(stated)} cases; reference/cases has {n['cases']}"


def test_the_readme_quotes_the_wrong_backends_summary():
    """`minireft check --backend tests/wrong_backends.py:UNSIGNED_QR -q`'s summary, run here."""
    report = run(str(ROOT / "tests" / "wrong_backends.py") + ":UNSIGNED_QR", cases_dir=CASES)
    summary = format_report(report, only_problems=True).splitlines()[-1]
    quoted = re.match(r"\d+ checks: [^;]*?(?=;| in )", summary).group(0)
    assert f"`{quoted}`" in README.read_text(encoding="utf-8"), summary


# ---------------------------------------------------------------- the python blocks


def blocks_needed(code: str) -> int:
    """1 + the largest block index in any `layers=[...]` of the code."""
    return 1 + max(int(x) for group in re.findall(r"layers=\[([\d, ]+)\]", code) for x in group.split(","))


def test_blocks_needed_reads_every_layers_list():
    assert blocks_needed('ReftConfig(layers=[14, 20])\nReftConfig(layers=[8,16], rank=8)') == 21


@pytest.fixture
def tiny_smollm2(tmp_path_factory):
    """A folder holding a tiny random Llama deep enough for the README's layers, and the tests'
    character tokenizer."""
    import tiny_models
    from test_train import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 1024  # character tokens: a review is a few hundred
    depth = blocks_needed("".join(readme_and_guide_blocks()))
    model, _ = tiny_models.build("llama", vocab_size=len(tokenizer), num_hidden_layers=depth,
                                 max_position_embeddings=1024)
    folder = tmp_path_factory.mktemp("tiny-smollm2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_every_python_block_of_the_readme_runs(tiny_smollm2, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import minireft.hf
    from minireft.demo import datasets
    from minireft.hf import loading

    real_load_model = loading.load_model

    def load_model(name_or_path="smollm2", **kwargs):
        assert name_or_path == "smollm2", "the README loads the packaged model"
        return real_load_model(str(tiny_smollm2), **kwargs)

    monkeypatch.setattr(loading, "load_model", load_model)
    monkeypatch.setattr(minireft.hf, "load_model", load_model, raising=False)
    for reader in ("rotten_tomatoes", "boolq", "piqa", "asdiv", "format_task"):
        def capped(split="train", n=None, *args, _real=getattr(datasets, reader), **kwargs):
            rows = _real(split, n, *args, **kwargs)
            return sorted(rows, key=lambda row: len(row["prompt"]))[:MAX_ROWS]

        monkeypatch.setattr(datasets, reader, capped)
    monkeypatch.chdir(tmp_path)

    blocks = readme_and_guide_blocks()
    assert len(blocks) > len(python_blocks(README.read_text(encoding="utf-8"))) > 0, "no guide blocks"
    namespace: dict = {"__name__": "__readme__"}
    for i, (where, block) in enumerate(zip(block_names(), blocks)):
        try:
            exec(compile(block, where, "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{where} fails:\n{block}") from exc
    # what the blocks say they leave behind
    from minireft import io

    for folder in ("runs/sentiment", "runs/hf"):
        assert io.is_adapter(tmp_path / folder), folder
