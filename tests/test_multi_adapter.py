"""Several named adapters on one base model (ReftModel.add_adapter / load_adapter / set_adapter /
delete_adapter) and per-row adapter choice (adapter_names) in forward and generate: a
left-padded batch mixing three adapters of different configs and the bare model gives every
row what it gets alone, in logits, greedy tokens and beam search."""

from __future__ import annotations

import io as _io

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models as tiny

from minireft import ReftConfig
from minireft.hf.model import DEFAULT, ReftModel, attach
from minireft.torch.edit import EditPlan

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Three adapters that differ in layers, rank, positions, tying and intervention.
CONFIGS = {
    DEFAULT: ReftConfig(layers=[0, 2], rank=3, positions="f2+l2"),
    "di": ReftConfig(layers=[1], rank=2, positions="l3", intervention="direft"),
    "tied": ReftConfig(layers=[0, 1, 2], rank=4, positions="f1+l1", tied=True, intervention="noreft"),
}
# Every adapter twice and the bare model twice, interleaved; short rows take the short-prompt rule.
NAMES = [DEFAULT, None, "di", "tied", "di", DEFAULT, None, "tied"]
LENGTHS = [7, 5, 2, 6, 1, 3, 4, 8]
NEW = 4
GREEDY = {"max_new_tokens": NEW, "do_sample": False, "pad_token_id": tiny.PAD_ID}
TOL = 1e-6


def _mixed(name="llama"):
    """A tiny model with the three adapters of CONFIGS, "default" active."""
    model, _ = tiny.build(name)
    reft = attach(model, CONFIGS[DEFAULT], seed=0)
    for i, (adapter, config) in enumerate(CONFIGS.items()):
        if adapter != DEFAULT:
            reft.add_adapter(adapter, config, seed=i)
    return reft


def _alone(reft, adapter, run):
    """run() with `adapter` active, or on the bare model (adapter None); the active one restored."""
    if adapter is None:  # the base model called directly: its hooks stay, but no plan is set
        return run(reft.model)
    active = reft.active_adapter
    reft.set_adapter(adapter)
    try:
        return run(reft)
    finally:
        reft.set_adapter(active)


def _our_hooks(reft) -> dict[int, int]:
    """{block index: number of forward hooks on it}."""
    return {i: len(block._forward_hooks) for i, block in enumerate(reft.model.model.layers)}


# ----------------------------------------------------------------------------- mixed batches


@pytest.mark.parametrize("name", [*tiny.DECODERS, "roberta"])
def test_mixed_batch_logits_equal_each_row_alone(name):
    reft = _mixed(name)
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=1)
    with torch.no_grad():
        batch = reft(input_ids=ids, attention_mask=mask, adapter_names=NAMES).logits  # (B, L, V)
        rows = [tiny.row_alone(ids, mask, b) for b in range(len(NAMES))]
        bare = [reft.model(input_ids=i, attention_mask=k).logits[0] for i, k in rows]
        for b, adapter in enumerate(NAMES):
            row_ids, row_mask = tiny.row_alone(ids, mask, b)
            alone = _alone(reft, adapter, lambda m, i=row_ids, k=row_mask: m(input_ids=i, attention_mask=k))
            got = batch[b, -row_ids.shape[1]:]  # left padding: the row's real tokens are last
            err = (got - alone.logits[0]).abs().max().item()
            assert err <= TOL, f"{name} row {b} ({adapter}): mixed batch vs alone differ by {err:.3e}"
            if adapter is not None:
                assert (alone.logits[0] - bare[b]).abs().max().item() > 1e-3, f"adapter {adapter} must edit"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_batch_on_cuda_equals_each_row_alone():
    reft = _mixed().cuda()
    ids, mask = (t.cuda() for t in tiny.random_ids(LENGTHS, side="left", seed=14))
    with torch.no_grad():
        batch = reft(input_ids=ids, attention_mask=mask, adapter_names=NAMES).logits
        tokens = reft.generate(ids, attention_mask=mask, adapter_names=NAMES, **GREEDY)[:, -NEW:]
        for b, adapter in enumerate(NAMES):
            row_ids, row_mask = tiny.row_alone(ids, mask, b)
            alone = _alone(reft, adapter, lambda m, i=row_ids, k=row_mask: m(input_ids=i, attention_mask=k))
            err = (batch[b, -row_ids.shape[1]:] - alone.logits[0]).abs().max().item()
            assert err <= 1e-5, f"row {b} ({adapter}): {err:.3e}"  # CUDA kernels vary with the batch
            gen = _alone(reft, adapter, lambda m, i=row_ids, k=row_mask: m.generate(i, attention_mask=k, **GREEDY))
            assert torch.equal(tokens[b], gen[0, -NEW:]), f"row {b} ({adapter})"


def test_mixed_batch_with_prompt_lengths_and_right_padding_equals_each_row_alone():
    reft = _mixed()
    ids, mask = tiny.random_ids(LENGTHS, side="right", seed=2)
    prompt_lengths = torch.tensor([max(1, n - 2) for n in LENGTHS])  # the last tokens are completions
    with torch.no_grad():
        batch = reft(input_ids=ids, attention_mask=mask, prompt_lengths=prompt_lengths,
                     adapter_names=NAMES).logits
        for b, adapter in enumerate(NAMES):
            row_ids, row_mask = tiny.row_alone(ids, mask, b)
            n = prompt_lengths[b:b + 1]
            if adapter is None:
                alone = reft.model(input_ids=row_ids, attention_mask=row_mask).logits
            else:
                alone = _alone(reft, adapter, lambda m, i=row_ids, k=row_mask, n=n: m(
                    input_ids=i, attention_mask=k, prompt_lengths=n)).logits
            err = (batch[b, :row_ids.shape[1]] - alone[0]).abs().max().item()
            assert err <= TOL, f"row {b} ({adapter}): {err:.3e}"


def test_adapter_names_none_is_the_active_adapter_and_all_none_is_the_bare_model():
    reft = _mixed()
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=3)
    with torch.no_grad():
        reft.set_adapter("di")
        active = reft(input_ids=ids, attention_mask=mask).logits
        named = reft(input_ids=ids, attention_mask=mask, adapter_names=["di"] * len(LENGTHS)).logits
        bare = reft(input_ids=ids, attention_mask=mask, adapter_names=[None] * len(LENGTHS)).logits
        base = reft.model(input_ids=ids, attention_mask=mask, position_ids=tiny.position_ids(mask)).logits
    assert torch.equal(active, named)
    assert torch.equal(bare, base)
    assert not torch.equal(active, bare)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_mixed_greedy_generation_equals_each_prompt_alone(name):
    reft = _mixed(name)
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=4)
    batch = reft.generate(ids, attention_mask=mask, adapter_names=NAMES, **GREEDY)[:, -NEW:]
    for b, adapter in enumerate(NAMES):
        row = tiny.row_alone(ids, mask, b)
        alone = _alone(reft, adapter, lambda m, r=row: m.generate(r[0], attention_mask=r[1], **GREEDY))
        assert torch.equal(batch[b], alone[0, -NEW:]), f"{name} row {b} ({adapter}): {batch[b]} vs {alone[0]}"
    bare = reft.generate(ids, attention_mask=mask, adapter_names=[None] * len(NAMES), **GREEDY)[:, -NEW:]
    edited = [b for b, adapter in enumerate(NAMES) if adapter is not None]
    assert not torch.equal(batch[edited], bare[edited]), "the adapters must change what is generated"


def test_mixed_beam_search_equals_each_prompt_alone():
    reft = _mixed()
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=5)
    beams = {**GREEDY, "num_beams": 3, "num_return_sequences": 2}
    batch = reft.generate(ids, attention_mask=mask, adapter_names=NAMES, **beams)[:, -NEW:]  # (2B, NEW)
    for b, adapter in enumerate(NAMES):
        row = tiny.row_alone(ids, mask, b)
        alone = _alone(reft, adapter, lambda m, r=row: m.generate(r[0], attention_mask=r[1], **beams))
        assert torch.equal(batch[2 * b:2 * b + 2], alone[:, -NEW:]), f"row {b} ({adapter})"


def test_generate_edits_each_adapters_rows_in_the_prefill_only():
    reft = _mixed()
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=6)
    reft._num_edits = 0
    reft.generate(ids, attention_mask=mask, adapter_names=NAMES, **GREEDY)
    assert reft._num_edits == 3, "one edit per hooked block, in the prefill only (blocks 0, 1, 2)"
    reft._num_edits = 0
    reft.generate(ids, attention_mask=mask, adapter_names=["di" if n else None for n in NAMES], **GREEDY)
    assert reft._num_edits == 1, "blocks that none of the named adapters edit run untouched"
    assert reft._plan_source is None and reft._plan is None


def test_mixed_batch_gradients_reach_the_active_adapter_only():
    reft = _mixed()
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=7)
    reft(input_ids=ids, attention_mask=mask, adapter_names=NAMES).logits.float().square().mean().backward()
    for adapter, groups in reft.adapters.items():
        grads = [p.grad for p in groups.parameters()]
        if adapter == reft.active_adapter:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads), f"{adapter} is frozen: no gradient"


def test_mixed_batch_gradients_with_checkpointing_equal_without():
    from minireft.hf.modes import enter_train_mode, restore_modes

    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=15)
    grads = []
    for checkpointing in (False, True):
        reft = _mixed()
        modes = enter_train_mode(reft, checkpointing)
        try:
            reft(input_ids=ids, attention_mask=mask, adapter_names=NAMES,
                 use_cache=False).logits.float().square().mean().backward()
        finally:
            restore_modes(modes)
        grads.append({n: p.grad.clone() for n, p in reft.named_trainable_parameters()})
    for name, plain in grads[0].items():
        err = ((grads[1][name] - plain).abs().max() / plain.abs().max()).item()
        assert err <= 1e-6, f"{name}: checkpointed gradient differs by {err:.2e} (relative)"


# ----------------------------------------------------------------------------- add, set, delete


def test_attach_names_the_first_adapter_default_and_it_stays_active():
    reft = _mixed()
    assert reft.active_adapter == DEFAULT and list(reft.adapters) == list(CONFIGS)
    assert reft.config == CONFIGS[DEFAULT] and reft.interventions is reft.adapters[DEFAULT]
    assert reft.adapter_configs == CONFIGS
    assert dict(reft.named_trainable_parameters()) == dict(reft.adapters[DEFAULT].named_parameters())


def test_set_adapter_moves_trainability_and_keeps_frozen_flags():
    reft = _mixed()
    frozen = next(reft.adapters[DEFAULT].parameters())
    frozen.requires_grad_(False)  # a parameter the user froze stays frozen across switches
    reft.set_adapter("tied")
    assert reft.config == CONFIGS["tied"] and reft.interventions is reft.adapters["tied"]
    names = [n for n, _ in reft.named_trainable_parameters()]
    assert names == [n for n, _ in reft.adapters["tied"].named_parameters()]
    assert names[0].split(".")[:2] == ["0", "tied"], "names stay {layer}.{group}.{param}"
    trainable = {a for a, groups in reft.adapters.items() if any(p.requires_grad for p in groups.parameters())}
    assert trainable == {"tied"}
    reft.set_adapter(DEFAULT)
    assert not frozen.requires_grad
    assert sum(p.requires_grad for p in reft.adapters[DEFAULT].parameters()) == \
        len(list(reft.adapters[DEFAULT].parameters())) - 1


def test_training_steps_change_the_active_adapter_only():
    reft = _mixed()
    reft.set_adapter("di")
    before = {a: [p.detach().clone() for p in g.parameters()] for a, g in reft.adapters.items()}
    ids, mask = tiny.random_ids([5, 3], seed=8)
    tiny.train_steps(reft, ids, mask, steps=2)
    for adapter, groups in reft.adapters.items():
        same = all(torch.equal(a, b) for a, b in zip(before[adapter], groups.parameters()))
        assert same == (adapter != "di"), adapter


def test_torch_save_of_the_active_adapter_round_trips():
    reft = _mixed()
    reft.set_adapter("di")
    buffer = _io.BytesIO()
    torch.save(reft.interventions.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {n for n, _ in reft.adapters["di"].named_parameters()}
    assert all(torch.equal(state[n], p) for n, p in reft.adapters["di"].named_parameters())
    assert any(k.startswith("adapters.tied.") for k in reft.state_dict())


def test_save_a_named_adapter_and_load_it_under_another_name(tmp_path):
    reft = _mixed()
    reft.save_pretrained(tmp_path / "di", adapter_name="di")
    reft.save_pretrained(tmp_path / "active")
    reft.load_adapter(tmp_path / "di", "di2")
    assert reft.active_adapter == DEFAULT and reft.adapter_configs["di2"] == CONFIGS["di"]
    for (n, p), (m, q) in zip(reft.adapters["di"].named_parameters(), reft.adapters["di2"].named_parameters()):
        assert n == m and torch.equal(p, q) and not q.requires_grad
    ids, mask = tiny.random_ids(LENGTHS[:4], side="left", seed=9)
    with torch.no_grad():
        a = reft(input_ids=ids, attention_mask=mask, adapter_names=["di", None, "di", DEFAULT]).logits
        b = reft(input_ids=ids, attention_mask=mask, adapter_names=["di2", None, "di2", DEFAULT]).logits
    assert torch.equal(a, b)
    active = ReftModel.from_pretrained(tiny.build("llama")[0], tmp_path / "active")
    assert active.config == CONFIGS[DEFAULT]
    assert all(torch.equal(p, q) for p, q in zip(active.interventions.parameters(),
                                                 reft.adapters[DEFAULT].parameters()))


def test_delete_adapter_removes_hooks_no_other_adapter_needs():
    model, _ = tiny.build("llama")
    reft = attach(model, ReftConfig(layers=[0], rank=2, positions="l2"))
    reft.add_adapter("late", ReftConfig(layers=[1, 2], rank=2, positions="l2"))
    reft.add_adapter("both", ReftConfig(layers=[2], rank=2, positions="l2"))
    assert _our_hooks(reft) == {0: 1, 1: 1, 2: 1}, "one hook per block, whatever the number of adapters"
    reft.delete_adapter("late")
    assert _our_hooks(reft) == {0: 1, 1: 0, 2: 1}
    assert list(reft.adapters) == [DEFAULT, "both"]
    with pytest.raises(ValueError, match="'default' is active.*set_adapter"):
        reft.delete_adapter(DEFAULT)
    reft.set_adapter("both")
    reft.delete_adapter(DEFAULT)
    assert _our_hooks(reft) == {0: 0, 1: 0, 2: 1}
    reft.delete_adapter("both")  # the last one: the model runs bare
    assert _our_hooks(reft) == {0: 0, 1: 0, 2: 0}
    assert reft.active_adapter is None and reft.config is None and reft.num_trainable_parameters() == 0
    ids, mask = tiny.random_ids([4, 6], side="left", seed=10)
    with torch.no_grad():
        got = reft(input_ids=ids, attention_mask=mask).logits
        want = model(input_ids=ids, attention_mask=mask, position_ids=tiny.position_ids(mask)).logits
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="no adapter left"):
        reft.save_pretrained("unused")
    reft.add_adapter("again", ReftConfig(layers=[1], rank=2, positions="l2"))
    assert reft.active_adapter == "again" and _our_hooks(reft) == {0: 0, 1: 1, 2: 0}


def test_detach_removes_every_adapters_hooks():
    reft = _mixed()
    model = reft.detach()
    assert _our_hooks(reft) == {0: 0, 1: 0, 2: 0} and not model._forward_pre_hooks
    assert all(p.requires_grad for p in model.parameters()), "requires_grad as before attach"
    with pytest.raises(RuntimeError, match="detached"):
        reft.add_adapter("late", CONFIGS["di"])


# ----------------------------------------------------------------------------- errors


def test_unknown_adapter_name_is_refused_naming_the_known_ones():
    reft = _mixed()
    ids, mask = tiny.random_ids([3, 4], seed=11)
    with pytest.raises(ValueError, match=r"'nope'.*\['default', 'di', 'tied'\]"):
        reft(input_ids=ids, attention_mask=mask, adapter_names=["di", "nope"])
    with pytest.raises(ValueError, match=r"'nope'.*\['default', 'di', 'tied'\]"):
        reft.generate(ids, attention_mask=mask, adapter_names=["nope", None], **GREEDY)
    with pytest.raises(ValueError, match="'nope'"):
        reft.set_adapter("nope")
    with pytest.raises(ValueError, match="'nope'"):
        reft.delete_adapter("nope")
    with pytest.raises(ValueError, match="'nope'"):
        reft.save_pretrained("unused", adapter_name="nope")


def test_adapter_names_of_the_wrong_length_or_type_are_refused():
    reft = _mixed()
    ids, mask = tiny.random_ids([3, 4], seed=12)
    with pytest.raises(ValueError, match="3 entries, but the batch has 2 rows"):
        reft(input_ids=ids, attention_mask=mask, adapter_names=["di", None, "di"])
    with pytest.raises(TypeError, match="one adapter name"):
        reft(input_ids=ids, attention_mask=mask, adapter_names="di")
    plan = EditPlan.from_mask(mask, None, reft.config)
    with pytest.raises(ValueError, match="leave edit_plan None"):
        reft(input_ids=ids, attention_mask=mask, adapter_names=["di", None], edit_plan=plan)


def test_bad_rows_are_named_by_their_batch_index():
    reft = _mixed()
    ids, mask = tiny.random_ids([3, 4, 2], seed=13)
    mask[2] = 0
    with pytest.raises(ValueError, match=r"adapter 'di': batch rows \[1, 2\]"):
        reft(input_ids=ids, attention_mask=mask, adapter_names=[None, "di", "di"])


@pytest.mark.parametrize("name, match", [("default", "exists already"), ("a.b", "without '.'"),
                                         ("", "non-empty"), (3, "non-empty"), ("keys", "reserved")])
def test_bad_new_adapter_names_are_refused(name, match):
    reft = _mixed()
    with pytest.raises(ValueError, match=match):
        reft.add_adapter(name, CONFIGS["di"])
    assert list(reft.adapters) == list(CONFIGS), "nothing was added"


def test_an_adapter_that_does_not_fit_the_model_is_refused_before_anything_changes():
    reft = _mixed()
    hooks = _our_hooks(reft)
    with pytest.raises(ValueError, match="out of range"):
        reft.add_adapter("far", ReftConfig(layers=[1, 9], rank=2))
    with pytest.raises(ValueError, match="rank"):
        reft.add_adapter("wide", ReftConfig(layers=[1], rank=tiny.HIDDEN + 1))
    assert list(reft.adapters) == list(CONFIGS) and _our_hooks(reft) == hooks
