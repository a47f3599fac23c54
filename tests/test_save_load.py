"""ReftModel.save_pretrained / from_pretrained: minireft.io's format, bit-identical reloads,
resumed training, and clear refusals of adapters that do not fit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import numpy as np
import tiny_models as tiny

from minireft import ReftConfig, io
from minireft.io import AdapterError, load_adapter
from minireft.hf import ReftModel, attach
from minireft.torch.stiefel import orthonormality_error

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CONFIG = ReftConfig(layers=[0, 2], rank=3, positions="f2+l2")
LENGTHS = [6, 4, 2]


def _trained(name="llama", config=CONFIG, steps=3, **build):
    """A ReftModel trained a few steps (so its tensors are not the init's), and a batch."""
    model, info = tiny.build(name, **build)
    ids, mask = tiny.random_ids(LENGTHS, side="right")
    reft = attach(model, config)
    tiny.train_steps(reft, ids, mask, steps=steps)
    return reft, info, ids, mask


def _logits(reft, info, ids, mask):
    with torch.no_grad():
        return reft(**tiny.model_inputs(info, ids, mask)).logits


def _max_orthonormality_error(reft) -> float:
    return max(orthonormality_error(p.detach()) for k, p in reft.named_trainable_parameters() if k.endswith(".R"))


def test_save_writes_the_format_that_numpy_reads(tmp_path):
    reft, *_ = _trained()
    path = reft.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in path.iterdir()) == [io.CONFIG_FILE, io.WEIGHTS_FILE], "no pickle, no extras"
    meta = json.loads((path / io.CONFIG_FILE).read_text())
    assert meta["hidden_size"] == tiny.HIDDEN and meta["base_model"] == "tiny-random-llama"
    assert {k: meta[k] for k in CONFIG.to_dict()} == CONFIG.to_dict()
    config, params = load_adapter(path)
    assert config == CONFIG
    assert set(params) == set(CONFIG.tensor_shapes(tiny.HIDDEN))
    for name, p in reft.named_trainable_parameters():
        assert params[name].dtype == np.float32 and np.array_equal(params[name], p.detach().numpy()), name


def test_numpy_alone_loads_the_adapter(tmp_path):
    """load_adapter in a fresh interpreter where importing torch is impossible."""
    reft, *_ = _trained(steps=1)
    path = reft.save_pretrained(tmp_path / "adapter")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from minireft.io import load_adapter\n"
            f"config, params = load_adapter({str(path)!r})\n"
            "print(config.layers, sorted(params)[0], params['0.prefix.R'].shape)")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(0, 2) 0.prefix.R (3, 32)"


@pytest.mark.parametrize("config", [
    CONFIG,
    ReftConfig(layers=[1], rank=2, positions="f3+l1", tied=True),
    ReftConfig(layers=[0, 1], rank=2, positions="l3", intervention="direft"),
], ids=["loreft-untied", "loreft-tied", "direft"])
@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_from_pretrained_restores_logits_bit_identically(tmp_path, name, config):
    reft, info, ids, mask = _trained(name, config)
    want = _logits(reft, info, ids, mask)
    reft.save_pretrained(tmp_path / "adapter")
    fresh, _ = tiny.build(name)  # same seed: the same base weights, a different object
    loaded = ReftModel.from_pretrained(fresh, tmp_path / "adapter")
    assert loaded.config == config
    saved = dict(reft.named_trainable_parameters())
    for k, p in loaded.named_trainable_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, saved[k]), k
    assert torch.equal(_logits(loaded, info, ids, mask), want)
    if config.intervention == "loreft":
        assert _max_orthonormality_error(loaded) <= 1e-5


def test_resumed_training_keeps_orthonormality(tmp_path):
    reft, _, ids, mask = _trained(steps=3)
    reft.save_pretrained(tmp_path / "adapter")
    fresh, _ = tiny.build("llama")
    resumed = ReftModel.from_pretrained(fresh, tmp_path / "adapter")
    losses = tiny.train_steps(resumed, ids, mask, steps=5, lr=3e-2)
    assert losses[-1] < losses[0], losses
    assert _max_orthonormality_error(resumed) <= 1e-5
    resumed.save_pretrained(tmp_path / "adapter")  # overwriting an adapter is allowed (atomic swap)
    assert load_adapter(tmp_path / "adapter")[0] == CONFIG


def test_bf16_base_and_saved_module_path(tmp_path):
    model, info = tiny.build("gpt2", dtype=torch.bfloat16)
    reft = attach(model, CONFIG, module_path="transformer.h", seed=3)
    ids, mask = tiny.random_ids(LENGTHS)
    want = _logits(reft, info, ids, mask)
    reft.save_pretrained(tmp_path / "a")
    assert load_adapter(tmp_path / "a")[0].module_path == "transformer.h"
    fresh, _ = tiny.build("gpt2", dtype=torch.bfloat16)
    loaded = ReftModel.from_pretrained(fresh, tmp_path / "a")
    assert loaded.module_path == "transformer.h"
    assert all(p.dtype == torch.float32 for _, p in loaded.named_trainable_parameters())
    assert torch.equal(_logits(loaded, info, ids, mask), want)


# ------------------------------------------------------------------ refusals


@pytest.fixture
def saved(tmp_path):
    reft, *_ = _trained(steps=1)
    return reft.save_pretrained(tmp_path / "adapter")


def test_hidden_size_mismatch_is_refused(saved):
    wider, _ = tiny.build("llama", hidden_size=48)
    with pytest.raises(ValueError, match="trained for hidden size 32, but this LlamaForCausalLM has hidden size 48"):
        ReftModel.from_pretrained(wider, saved)
    attach(wider, CONFIG).detach()  # nothing was left attached by the refusal


def test_layer_out_of_range_for_the_model_is_refused(saved):
    shallow, _ = tiny.build("llama", num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"layer\(s\) \[2\] out of range.*valid layers are 0\.\.1"):
        ReftModel.from_pretrained(shallow, saved)


def test_unknown_spec_version_is_refused(saved):
    meta = json.loads((saved / io.CONFIG_FILE).read_text())
    meta["spec_version"] = "9.0"
    (saved / io.CONFIG_FILE).write_text(json.dumps(meta))
    model, _ = tiny.build("llama")
    with pytest.raises(AdapterError, match="spec_version '9.0'"):
        ReftModel.from_pretrained(model, saved)


def test_truncated_safetensors_is_refused(saved):
    weights = saved / io.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-40])
    model, _ = tiny.build("llama")
    with pytest.raises(AdapterError, match="truncated or corrupt"):
        ReftModel.from_pretrained(model, saved)


def test_missing_folder_is_refused(tmp_path):
    model, _ = tiny.build("llama")
    with pytest.raises(FileNotFoundError, match="no adapter folder"):
        ReftModel.from_pretrained(model, tmp_path / "nothing")


@needs_cuda
def test_cuda_bf16_save_load(tmp_path):
    model, info = tiny.build("llama", dtype=torch.bfloat16)
    reft = attach(model.cuda(), CONFIG, seed=4)
    ids, mask = (t.cuda() for t in tiny.random_ids(LENGTHS))
    want = _logits(reft, info, ids, mask)
    reft.save_pretrained(tmp_path / "a")
    fresh, _ = tiny.build("llama", dtype=torch.bfloat16)
    loaded = ReftModel.from_pretrained(fresh.cuda(), tmp_path / "a")
    assert all(p.is_cuda and p.dtype == torch.float32 for _, p in loaded.named_trainable_parameters())
    assert torch.equal(_logits(loaded, info, ids, mask), want)


# ------------------------------------------------------------------ prompt format


def test_prompt_format_round_trip_and_template_check(tmp_path):
    """save_pretrained records the prompt format; from_pretrained restores it, and with a
    tokenizer warns once when the tokenizer's chat template is not the one trained with."""
    import warnings
    from types import SimpleNamespace

    from minireft.hf.prompt_format import PromptFormat, prompt_format_of

    trained_with = SimpleNamespace(chat_template="{{ messages }} A:")
    reft, *_ = _trained(steps=1)
    assert reft.prompt_format is None
    reft.save_pretrained(tmp_path / "unknown")
    fmt = prompt_format_of(trained_with, True)
    reft.save_pretrained(tmp_path / "chat", prompt_format=fmt)
    reft.detach()

    fresh, _ = tiny.build("llama")
    loaded = ReftModel.from_pretrained(fresh, tmp_path / "unknown")
    assert loaded.prompt_format is None  # an adapter of unknown format (as before this field) loads
    loaded.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ReftModel.from_pretrained(fresh, tmp_path / "chat", tokenizer=trained_with)
    assert loaded.prompt_format == fmt == PromptFormat(True, fmt.chat_template_sha256)
    loaded.detach()
    for other, words in ((SimpleNamespace(chat_template="{{ messages }} B:"), "a different chat template"),
                         (SimpleNamespace(chat_template=None), "has no chat template")):
        with pytest.warns(UserWarning, match=words) as record:
            ReftModel.from_pretrained(fresh, tmp_path / "chat", tokenizer=other).detach()
        assert len(record) == 1 and "\n" not in str(record[0].message)
