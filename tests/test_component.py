"""ReftConfig.component: the edit placed on the output of a block's attention or MLP submodule
(minireft.hf.blocks.find_component) instead of the block's, on every tiny architecture attach
supports, with the block output's tests: identity init gives the base logits, the edit lands
exactly at the rule's positions of that submodule's output (and equals minireft.edit of it),
save/load, generation edits the prefill only, checkpointing, pyreft round trips, errors.

BERT and RoBERTa blocks have no MLP child (post-norm: `intermediate` then `output`, which ends
the block): "mlp_output" is refused there, and the MLP's own output is reached by its path
inside the block, "output.dense", tested in its place.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import test_pyreft as tp
import tiny_models as tiny
from strategies import assert_close, unit_roundoff
from test_attach import LENGTHS, expected_positions, logits_of
from torch import nn

from minireft import ReftConfig, edit, io
from minireft.edit import layer_params
from minireft.hf.blocks import find_blocks, find_component
from minireft.hf import ReftModel, attach

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

POST_NORM = ("bert", "roberta")
# What each component edits per architecture: (name, component, the module's class name).
SUBLAYERS = {"gpt2": ("GPT2Attention", "GPT2MLP"), "llama": ("LlamaAttention", "LlamaMLP"),
             "qwen2": ("Qwen2Attention", "Qwen2MLP"), "mistral": ("MistralAttention", "MistralMLP"),
             "gemma3": ("Gemma3Attention", "Gemma3MLP"), "bert": ("BertAttention", "Linear"),
             "roberta": ("RobertaAttention", "Linear")}


def _mlp(name: str) -> str:
    return "output.dense" if name in POST_NORM else "mlp_output"


CASES = [(name, component) for name in tiny.ALL for component in ("attention_output", _mlp(name))]
IDS = [f"{name}-{component}" for name, component in CASES]


def _module(model, layer: int, component: str) -> nn.Module:
    return find_component(find_blocks(model)[1][layer], component)


# ------------------------------------------------------------------ finding


@pytest.mark.parametrize("name", tiny.ALL)
def test_find_component_finds_the_attention_and_mlp_child(name):
    model, _ = tiny.build(name)
    block = find_blocks(model)[1][0]
    attention, mlp = SUBLAYERS[name]
    assert find_component(block, "block_output") is block
    assert type(find_component(block, "attention_output")).__name__ == attention
    assert type(find_component(block, _mlp(name))).__name__ == mlp
    children = list(block.children())
    assert find_component(block, "attention_output") in children
    if name not in POST_NORM:
        assert find_component(block, "mlp_output") in children


@pytest.mark.parametrize("name", POST_NORM)
def test_a_post_norm_block_refuses_mlp_output_and_says_what_to_pass(name):
    model, _ = tiny.build(name)
    with pytest.raises(ValueError, match=r"cannot find the mlp submodule of this \w+Layer for "
                                         r"component='mlp_output'.*component='output.dense'.*"
                                         r"intermediate \(\w+Intermediate\), .*output.dense \(Linear\)"):
        attach(model, ReftConfig(layers=[1], component="mlp_output"))
    assert not any(m._forward_hooks for m in model.modules()), "a refused attach leaves no hook behind"


def test_an_unknown_path_and_an_ambiguous_block_are_refused_naming_the_children():
    model, _ = tiny.build("llama")
    with pytest.raises(ValueError, match=r"component='attn_out' is not one of \['block_output', "
                                         r"'attention_output', 'mlp_output'\] and names no submodule of "
                                         r"this LlamaDecoderLayer; .*self_attn \(LlamaAttention\), "
                                         r".*mlp.down_proj \(Linear\)"):
        attach(model, ReftConfig(layers=[0], component="attn_out"))

    class TwoAttentions(nn.Module):  # a decoder block with cross-attention, say
        def __init__(self):
            super().__init__()
            self.self_attn, self.cross = nn.Linear(2, 2), nn.Linear(2, 2)
            self.cross.__class__ = type("CrossAttention", (nn.Linear,), {})

    with pytest.raises(ValueError, match=r"2 of its children could be: \['self_attn', 'cross'\]; pass the "
                                         r"dotted path"):
        find_component(TwoAttentions(), "attention_output")
    assert find_component(TwoAttentions(), "cross") is not None  # the path picks one


# ------------------------------------------------------------------ the edit in the model


@pytest.mark.parametrize("name, component", CASES, ids=IDS)
def test_identity_init_gives_the_base_logits_exactly(name, component):
    model, info = tiny.build(name)
    ids, mask = tiny.random_ids(LENGTHS, side="right")
    base = logits_of(model, info, ids, mask)
    reft = attach(model, ReftConfig(layers=[0, 1, 2], rank=4, positions="f2+l2", init="identity",
                                    component=component))
    got = logits_of(reft, info, ids, mask)
    assert torch.equal(got, base), f"{name} {component}: differs by {(got - base).abs().max():.3e}"
    assert reft._num_edits == 3, "every configured layer's submodule must have run its edit"


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name, component", CASES, ids=IDS)
def test_the_edit_lands_exactly_at_the_rules_positions_of_the_submodule_output(name, component, side):
    """Layer 1's submodule output differs from the base at the spec's positions and nowhere
    else, and is minireft.edit of the base one; the block output (what block_output edits)
    is not the state edited here."""
    model, info = tiny.build(name)
    ids, mask = tiny.random_ids([8, 6, 3, 1], side=side, seed=4)
    prompt_lengths = torch.tensor([5, 6, 3, 1])  # row 0: tokens 5..7 are a completion, never edited
    module = _module(model, 1, component)
    seen = []
    capture = module.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    base = logits_of(model, info, ids, mask)
    reft = attach(model, ReftConfig(layers=[1], rank=2, positions="f1+l2", component=component))
    out = logits_of(reft, info, ids, mask, prompt_lengths=prompt_lengths)
    capture.remove()
    assert len(seen) == 2 and seen[0].shape[-1] == tiny.HIDDEN
    changed = (seen[1] - seen[0]).abs().amax(-1) > 0  # (B, L)
    got = {tuple(x) for x in changed.nonzero().tolist()}
    assert got == expected_positions(mask, prompt_lengths, 1, 2), f"{name} {component}: edited {sorted(got)}"
    spec = edit(seen[0].numpy(), mask.numpy(), prompt_lengths.numpy(), reft.config,
                layer_params(reft.adapter_state(), 1))
    assert_close(seen[1].numpy(), spec, atol=64 * unit_roundoff(np.float32) * (1 + np.abs(spec).max()),
                 what=f"hooked {component} vs minireft.edit", case=name)
    assert not torch.equal(out, base)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_the_components_are_different_edit_points(name):
    """The same adapter parameters at the block, attention and MLP outputs give three different
    results: the hook really moved."""
    model, info = tiny.build(name)
    ids, mask = tiny.random_ids(LENGTHS, side="right", seed=2)
    logits = {}
    for component in ("block_output", "attention_output", _mlp(name)):
        reft = attach(model, ReftConfig(layers=[1], rank=3, positions="f2+l2", component=component), seed=7)
        logits[component] = logits_of(reft, info, ids, mask)
        reft.detach()
    a, b, c = logits.values()
    assert not torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(b, c)


@pytest.mark.parametrize("name, component", [c for c in CASES if c[0] in ("llama", "gpt2", "bert")],
                         ids=[i for i, c in zip(IDS, CASES) if c[0] in ("llama", "gpt2", "bert")])
def test_save_load_round_trip_restores_the_logits_bit_for_bit(name, component, tmp_path):
    model, info = tiny.build(name)
    ids, mask = tiny.random_ids(LENGTHS, side="right", seed=1)
    reft = attach(model, ReftConfig(layers=[0, 2], rank=3, positions="f2+l2", component=component), seed=3)
    tiny.train_steps(reft, ids, mask)
    reft.eval()
    want = logits_of(reft, info, ids, mask)
    reft.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "reft_config.json").read_text(encoding="utf-8"))
    assert saved["component"] == component
    assert io.load_adapter(tmp_path / "adapter")[0].component == component  # NumPy alone reads it
    base = reft.detach()
    again = ReftModel.from_pretrained(base, tmp_path / "adapter")
    assert again.config.component == component
    assert torch.equal(logits_of(again, info, ids, mask), want)


def test_a_block_output_adapter_writes_no_component_and_loads_as_block_output(tmp_path):
    """Adapters written before the field existed have none; new block_output ones write none."""
    model, _ = tiny.build("llama")
    reft = attach(model, ReftConfig(layers=[1], rank=2), seed=1)
    reft.save_pretrained(tmp_path / "old")
    assert "component" not in json.loads((tmp_path / "old" / "reft_config.json").read_text(encoding="utf-8"))
    again = ReftModel.from_pretrained(reft.detach(), tmp_path / "old")
    assert again.config.component == "block_output"
    assert find_blocks(model)[1][1]._forward_hooks, "the block itself is hooked"
    assert not _module(model, 1, "attention_output")._forward_hooks


@pytest.mark.parametrize("component", ["attention_output", "mlp_output"])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_generation_edits_the_prefill_only(name, component):
    """A decode step continuing the KV cache is not edited: over 4 new tokens the two hooked
    submodules run their edit once each (the prefill), and greedy generation with an identity
    adapter is the base model's."""
    model, _ = tiny.build(name)
    ids, mask = tiny.random_ids([6, 4], side="left", seed=5)
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": tiny.PAD_ID}
    with torch.no_grad():
        base = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    reft = attach(model, ReftConfig(layers=[0, 2], rank=2, positions="f1+l1", init="identity",
                                    component=component))
    calls = []
    handle = _module(model, 2, component).register_forward_hook(lambda *a: calls.append(1))
    same = reft.generate(ids, mask, **kwargs)
    handle.remove()
    assert len(calls) == 4, "the submodule runs in the prefill and in each of 3 decode steps"
    assert reft._num_edits == 2, f"edited {reft._num_edits} times; only the prefill (2 layers) may be"
    assert torch.equal(same, base)


@pytest.mark.parametrize("component", ["attention_output", "mlp_output"])
def test_checkpointing_gives_the_same_gradients(component):
    """The hooked submodule runs inside the checkpointed block: recomputed in backward, it is
    edited with the same plan (ReftModel's context_fn), so the gradients are those without."""
    from test_checkpointing import EXAMPLES, max_relative
    from test_train import tiny_tokenizer

    from minireft.hf.data import collate, encode_examples
    from minireft.hf.loss import loss_sum
    from minireft.hf.modes import enter_train_mode, restore_modes

    model, _ = tiny.build("llama")
    batch = collate(encode_examples(tiny_tokenizer(), EXAMPLES), 0, padding_side="left")
    grads, calls = {}, {}
    for checkpointing in (False, True):
        reft = attach(model, ReftConfig(layers=[0, 1, 2], rank=2, positions="f2+l2", component=component))
        seen = []
        # A pre-hook: torch's recompute stops early once the last saved tensor it needs (here the
        # edit's own) is rebuilt, so hooks after ours on the same module may not run again.
        handle = _module(model, 1, component).register_forward_pre_hook(lambda *a, seen=seen: seen.append(1))
        modes = enter_train_mode(reft, checkpointing)
        try:
            reft._num_edits = 0
            loss, _ = loss_sum(reft, batch, "lm")
            loss.backward()
            grads[checkpointing] = {n: p.grad.clone() for n, p in reft.named_trainable_parameters()}
        finally:
            restore_modes(modes)
            handle.remove()
            reft.detach()
        calls[checkpointing] = (len(seen), reft._num_edits)
    assert calls == {False: (1, 3), True: (2, 6)}, f"(calls of layer 1's submodule, edits): {calls}"
    err = max_relative(grads[True], grads[False])
    assert err <= 1e-6, f"checkpointed gradients differ by {err:.2e} (relative)"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("component", ["attention_output", "mlp_output"])
def test_a_bf16_base_with_float32_interventions(component, device):
    """The submodule's bf16 output is edited in float32 and cast back: an identity adapter gives
    the base logits exactly, and a paper-init adapter trains."""
    model, info = tiny.build("llama", dtype=torch.bfloat16)
    model.to(device)
    ids, mask = (t.to(device) for t in tiny.random_ids(LENGTHS, side="right"))
    base = logits_of(model, info, ids, mask)
    ident = attach(model, ReftConfig(layers=[0, 2], positions="f2+l2", init="identity", component=component))
    assert torch.equal(logits_of(ident, info, ids, mask), base)
    ident.detach()
    reft = attach(model, ReftConfig(layers=[0, 2], rank=3, positions="f2+l2", component=component))
    start = {k: p.detach().clone() for k, p in reft.named_trainable_parameters()}
    losses = tiny.train_steps(reft, ids, mask, steps=2)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    for k, p in reft.named_trainable_parameters():
        assert p.dtype == torch.float32 and p.device.type == device and not torch.equal(p, start[k]), k


# ------------------------------------------------------------------ pyreft


@pytest.mark.parametrize("component", ["attention_output", "mlp_output"])
def test_pyreft_write_then_read_keeps_the_component(component, tmp_path):
    from minireft.pyreft import read_pyreft, write_pyreft

    config = ReftConfig(layers=[0, 2], rank=3, positions="f2+l1", component=component, position_rule="pyreft")
    params = attach(tiny.build("llama")[0], config, seed=2).adapter_state()
    write_pyreft(tmp_path / "pyreft", config, params)
    meta = json.loads((tmp_path / "pyreft" / "config.json").read_text(encoding="utf-8"))
    assert {rep[1] for rep in meta["representations"]} == {component}
    assert (tmp_path / "pyreft" / f"intkey_layer_2_comp_{component}_unit_pos_nunit_1#1.bin").is_file()
    again, back = read_pyreft(tmp_path / "pyreft", "f2+l1")
    assert again == config
    assert all(np.array_equal(back[k], params[k]) for k in params)


def test_pyreft_refuses_a_path_component_and_mixed_components(tmp_path):
    from minireft.pyreft import PyreftError, read_pyreft, write_pyreft

    config = ReftConfig(layers=[1], rank=2, tied=True, component="mlp.down_proj")
    params = attach(tiny.build("llama")[0], config).adapter_state()
    with pytest.raises(PyreftError, match=r"component 'mlp.down_proj' cannot be written for pyreft"):
        write_pyreft(tmp_path / "a", config, params)
    two = ReftConfig(layers=[0, 1], rank=2, tied=True, component="mlp_output")
    write_pyreft(tmp_path / "b", two, attach(tiny.build("llama")[0], two).adapter_state())
    meta_path = tmp_path / "b" / "config.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["representations"][1][1] = "attention_output"
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(PyreftError, match=r"several components \['attention_output', 'mlp_output'\]"):
        read_pyreft(tmp_path / "b", "f2+l2")


@tp.needs_pyreft
@pytest.mark.parametrize("component", ["attention_output", "mlp_output"])
def test_an_exported_folder_loads_into_pyreft_with_equal_logits(component, tmp_path):
    """pyreft's own loader and forward (pyvene hooks its self_attn / mlp by its own table) give
    minireft's logits: the two mean the same module by the same name."""
    from minireft.pyreft import write_pyreft

    pyreft = tp.fixtures.import_pyreft()
    config = ReftConfig(layers=(0, 2), rank=3, positions="f2+l2", component=component, position_rule="pyreft")
    params = tp.bf16_exact(config, seed=4)
    write_pyreft(tmp_path / "pyreft", config, params)
    reft = pyreft.ReftModel.load(str(tmp_path / "pyreft"), tp.tiny_model())
    for intervention in reft.interventions.values():
        intervention.learned_source.float()  # its loader builds it in bfloat16 (test_pyreft)
    worst, moved = 0.0, 0.0
    block_output = ReftConfig.from_dict(config.to_dict() | {"component": "block_output"})
    for n in tp.PROMPT_LENGTHS:
        ids = tp.prompt(n, seed=200 + n)
        want = tp.pyreft_logits(reft, ids, config.positions, config.tied)
        worst = max(worst, tp.relative(tp.minireft_logits(config, params, ids), want))
        moved = max(moved, tp.relative(tp.minireft_logits(block_output, params, ids), want))
    print(f"{component}: max relative |Δlogits| vs pyreft {worst:.2e}")
    assert worst <= tp.RTOL
    assert moved > 1e-3, "the same parameters at the block output should give other logits"


# ------------------------------------------------------------------ the CLI


def test_minireft_train_takes_component():
    from minireft import cli

    parser = cli.build_parser()
    args = parser.parse_args(["train", "--model", "m", "--data", "d.jsonl", "--output", "o",
                              "--component", "attention_output"])
    assert args.component == "attention_output"
    assert cli.config_from_args(args, 3).component == "attention_output"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--model", "m", "--data", "d.jsonl", "--component", "attn"])


# ------------------------------------------------------------------ several adapters


@pytest.mark.parametrize("name", ["llama", "roberta"])
def test_adapters_on_different_components_of_one_layer_mix_in_one_batch(name):
    """Three adapters on layer 1 (the block, its attention, its MLP) and the bare model in one
    left-padded batch: every row gets what it gets alone with its adapter (<= 1e-6)."""
    model, info = tiny.build(name)
    components = {"block": "block_output", "attention": "attention_output", "mlp": _mlp(name)}
    reft = None
    for i, (adapter, component) in enumerate(components.items()):
        config = ReftConfig(layers=[1], rank=2, positions="f1+l2", component=component)
        if reft is None:
            reft = attach(model, config, seed=i)
            first = reft.active_adapter
        else:
            reft.add_adapter(adapter, config, seed=i)
    names = [first, "attention", "mlp", None, "attention"]
    ids, mask = tiny.random_ids([7, 5, 6, 4, 2], side="left", seed=6)
    inputs = tiny.model_inputs(info, ids, mask)
    with torch.no_grad():
        batch = reft(**inputs, adapter_names=names).logits
        for b, adapter in enumerate(names):
            alone = reft(**tiny.model_inputs(info, *tiny.row_alone(ids, mask, b)), adapter_names=[adapter]).logits
            diff = (batch[b][mask[b].bool()] - alone[0]).abs().max().item()
            assert diff <= 1e-6, f"{name} row {b} ({adapter}): {diff:.2e} from alone"
        rows = [reft(**inputs, adapter_names=[a] * len(names)).logits for a in (first, "attention", "mlp")]
    assert all(not torch.equal(x, y) for x, y in ((rows[0], rows[1]), (rows[0], rows[2]), (rows[1], rows[2])))
