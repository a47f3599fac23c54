"""ReftModel.generate on tiny random decoders: the prefill is edited, decode steps are not;
greedy, sampling, beam search; batched left-padded generation equals each prompt alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models as tiny

from minireft import ReftConfig
from minireft.hf import attach

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CONFIG = ReftConfig(layers=[0, 2], rank=3, positions="f2+l2")
LENGTHS = [7, 4, 2, 1]  # short rows take the short-prompt rule; the 1-token row edits its only token
NEW = 4
GREEDY = {"max_new_tokens": NEW, "do_sample": False, "pad_token_id": tiny.PAD_ID}


def _reft(name, config=CONFIG, seed=0):
    model, _ = tiny.build(name)
    return attach(model, config, seed=seed)


@pytest.mark.parametrize("name", tiny.DECODERS)
def test_batched_left_padded_greedy_equals_each_prompt_alone(name):
    reft = _reft(name)
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=1)
    batch = reft.generate(ids, attention_mask=mask, **GREEDY)
    for b in range(len(LENGTHS)):
        alone = reft.generate(*tiny.row_alone(ids, mask, b), **GREEDY)
        assert torch.equal(batch[b, -NEW:], alone[0, -NEW:]), f"{name} row {b}: {batch[b, -NEW:]} vs {alone[0]}"
    base = reft.detach().generate(ids, attention_mask=mask, **GREEDY)
    assert not torch.equal(base, batch), "the adapter must change what is generated"


@pytest.mark.parametrize("name", tiny.DECODERS)
def test_generate_logits_equal_forward_with_prompt_only_edits(name):
    """Each step's logits == ReftModel.forward on the final sequence with prompt_lengths = the
    prompt, so decode steps see the edit through the KV cache only and are themselves unedited."""
    reft = _reft(name)
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=2)
    out = reft.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_logits=True, **GREEDY)
    assert reft._num_edits == len(CONFIG.layers), "only the prefill may be edited"
    seq = out.sequences  # (B, L0 + NEW)
    full_mask = torch.cat([mask, torch.ones(len(LENGTHS), NEW, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        logits = reft(input_ids=seq, attention_mask=full_mask, position_ids=tiny.position_ids(full_mask),
                      prompt_lengths=mask.sum(1)).logits
    L0 = ids.shape[1]
    for step, step_logits in enumerate(out.logits):
        diff = (logits[:, L0 - 1 + step] - step_logits).abs().max().item()
        assert diff <= 1e-5, f"{name} step {step}: generate vs forward logits differ by {diff:.3e}"


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_manual_prefill_then_unedited_decode_equals_generate(name):
    reft = _reft(name)
    ids, mask = tiny.random_ids([6], seed=3)
    want = reft.generate(ids, attention_mask=mask, **GREEDY)[0, -NEW:]
    reft._num_edits = 0
    with torch.no_grad():
        out = reft(input_ids=ids, attention_mask=mask, use_cache=True)  # edited prefill
        cache_key = "cache" if "cache" in out else "past_key_values"
        tokens = [out.logits[:, -1].argmax(-1)]
        for _ in range(NEW - 1):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            # The base model called directly: the hooks stay, but no plan is set, so nothing is edited.
            out = reft.model(input_ids=tokens[-1][:, None], attention_mask=mask, use_cache=True,
                             **{cache_key: out[cache_key]})
            tokens.append(out.logits[:, -1].argmax(-1))
    assert reft._num_edits == len(CONFIG.layers)
    assert torch.equal(torch.cat(tokens), want)


@pytest.mark.parametrize("name", tiny.DECODERS)
def test_greedy_sampling_and_beam_search_edit_the_prefill_only(name):
    reft = _reft(name, ReftConfig(layers=[1], rank=2, positions="f1+l1", tied=True))
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=4)
    runs = {
        "greedy": GREEDY,
        "sample": {**GREEDY, "do_sample": True, "top_k": 20, "num_return_sequences": 2},
        "beam": {**GREEDY, "num_beams": 3, "num_return_sequences": 2},
    }
    for kind, kwargs in runs.items():
        reft._num_edits = 0
        torch.manual_seed(0)
        out = reft.generate(ids, attention_mask=mask, **kwargs)
        rows = len(LENGTHS) * kwargs.get("num_return_sequences", 1)
        assert out.shape[0] == rows and out.shape[1] <= ids.shape[1] + NEW, (kind, out.shape)
        assert torch.equal(out[:, : ids.shape[1]], ids.repeat_interleave(rows // len(LENGTHS), 0)), kind
        assert reft._num_edits == 1, f"{kind}: {reft._num_edits} block edits, expected 1 (the prefill)"
    torch.manual_seed(0)
    again = reft.generate(ids, attention_mask=mask, **runs["sample"])
    torch.manual_seed(0)
    assert torch.equal(again, reft.generate(ids, attention_mask=mask, **runs["sample"])), "seeded sampling"


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_beam_search_batched_equals_alone(name):
    reft = _reft(name)
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=5)
    kwargs = {**GREEDY, "num_beams": 3}
    batch = reft.generate(ids, attention_mask=mask, **kwargs)
    for b in range(len(LENGTHS)):
        alone = reft.generate(*tiny.row_alone(ids, mask, b), **kwargs)
        assert torch.equal(batch[b, -NEW:], alone[0, -NEW:]), f"{name} row {b}"


def test_without_cache_every_full_step_edits_the_prompt_and_gives_the_same_text():
    reft = _reft("qwen2")
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=6)
    cached = reft.generate(ids, attention_mask=mask, **GREEDY)
    reft._num_edits = 0
    uncached = reft.generate(ids, attention_mask=mask, use_cache=False, **GREEDY)
    assert torch.equal(cached, uncached)
    assert reft._num_edits == NEW * len(CONFIG.layers)  # each step recomputes (and re-edits) the prompt


def test_default_mask_and_errors():
    reft = _reft("llama")
    ids, _ = tiny.random_ids([5, 5], seed=7)
    assert reft.generate(ids, **GREEDY).shape == (2, 5 + NEW)
    mask = torch.ones_like(ids)
    mask[1] = 0
    with pytest.raises(ValueError, match="row 1 is empty"):
        reft.generate(ids, attention_mask=mask, **GREEDY)
    assert reft._plan_source is None and reft._plan is None, "a failed call leaves no stale plan"
    # The base model called directly while attached runs unedited.
    with torch.no_grad():
        direct = reft.model(input_ids=ids).logits
        assert torch.equal(direct, reft.detach()(input_ids=ids).logits)


@needs_cuda
def test_cuda_bf16_generate():
    model, _ = tiny.build("llama", dtype=torch.bfloat16)
    reft = attach(model.cuda(), CONFIG)
    ids, mask = (t.cuda() for t in tiny.random_ids(LENGTHS, side="left", seed=8))
    out = reft.generate(ids, attention_mask=mask, **GREEDY)
    assert out.is_cuda and out.shape == (len(LENGTHS), ids.shape[1] + NEW)
    assert reft._num_edits == len(CONFIG.layers)
    beams = reft.generate(ids, attention_mask=mask, num_beams=2, **GREEDY)
    assert beams.shape[0] == len(LENGTHS)
