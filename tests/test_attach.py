"""attach / ReftModel on tiny random Hugging Face models: identity, detach, padding
invariance, edited positions, bf16 bases, analytic backward, errors."""

from __future__ import annotations

import itertools
import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import numpy as np
import tiny_models as tiny
from strategies import assert_close, unit_roundoff
from torch import nn

from minireft import ReftConfig, edit
from minireft.edit import layer_params
from minireft.hf import ReftModel, attach
from minireft.hf.blocks import find_blocks
from minireft.positions import intervention_positions
from minireft.torch import ReftOptimizer, direft, loreft
from minireft.torch.edit import position_index
from minireft.torch.stiefel import orthonormality_error

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
PAPER = ReftConfig(layers=[0, 2], rank=3, positions="f2+l2")
LENGTHS = [9, 5, 2]  # the 2-token row takes the short-prompt rule (2 < p + s)


def logits_of(model, info, ids, mask, **kwargs):
    with torch.no_grad():
        return model(**tiny.model_inputs(info, ids, mask), **kwargs).logits


def _hooks(model):
    return {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in model.named_modules()}


def expected_positions(mask, prompt_lengths, p, s):
    """Set of (row, column) the spec edits: first real token + intervention_positions."""
    edited = set()
    for b in range(mask.shape[0]):
        first = int(mask[b].nonzero()[0])
        prefix, suffix = intervention_positions(int(prompt_lengths[b]), p, s)
        edited |= {(b, first + t) for t in prefix + suffix}
    return edited


# ------------------------------------------------------------------ positions, vectorised


def test_position_index_matches_spec_rule():
    """position_index (vectorised) == first + intervention_positions, for every n ≤ 12, p, s ≤ 4."""
    for p, s, tied in itertools.product(range(5), range(5), (False, True)):
        if p + s == 0:
            continue
        n = torch.arange(1, 13)
        first = torch.arange(12) % 3  # (B,): arbitrary left-padding offsets
        groups = position_index(first, n, p, s, tied)
        for b in range(len(n)):
            want_p, want_s = intervention_positions(int(n[b]), p, s)
            want = {"tied": want_p + want_s, "prefix": want_p, "suffix": want_s}
            for group, (index, valid) in groups.items():
                got = (index[b][valid[b]] - first[b]).tolist()
                assert got == want[group], (p, s, tied, int(n[b]), group, got, want[group])
            assert set(groups) == ({"tied"} if tied else {g for g, k in (("prefix", p), ("suffix", s)) if k})


# ------------------------------------------------------------------ per architecture


@pytest.mark.parametrize("name", tiny.ALL)
def test_identity_init_gives_base_logits(name):
    model, info = tiny.build(name)
    ids, mask = tiny.random_ids(LENGTHS, side="right")
    base = logits_of(model, info, ids, mask)
    reft = attach(model, ReftConfig(layers=[0, 1, 2], rank=4, positions="f2+l2", init="identity"))
    got = logits_of(reft, info, ids, mask)
    diff = (got - base).abs().max().item()
    assert diff <= 1e-6, f"{name}: identity-init logits differ from the base by {diff:.3e} > 1e-6"
    assert reft._num_edits == 3, "every configured block must have run its edit"


@pytest.mark.parametrize("name", tiny.ALL)
def test_detach_removes_hooks_and_weights_never_change(name):
    model, info = tiny.build(name)
    ids, mask = tiny.random_ids(LENGTHS, side="right")
    before = logits_of(model, info, ids, mask)
    hooks, weights = _hooks(model), {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    reft = attach(model, PAPER, seed=1)
    assert not any(p.requires_grad for p in model.parameters()), "base parameters must be frozen"
    losses = tiny.train_steps(reft, ids, mask)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert all(p.grad is None for p in model.parameters()), "no gradient may reach the base weights"
    base = reft.detach()
    assert base is model
    assert _hooks(model) == hooks, "detach() must remove every hook it added"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), f"{name}: base weight {k} changed"
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
    assert torch.equal(logits_of(model, info, ids, mask), before), f"{name}: logits after detach differ"
    with pytest.raises(RuntimeError, match="detached"):
        reft(input_ids=ids, attention_mask=mask)
    attach(model, PAPER).detach()  # the model can be attached again


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("name", tiny.ALL)
def test_row_logits_independent_of_batch_and_padding_side(name, tied):
    """A row's real-token logits are the same alone, right-padded and left-padded (≤ 1e-5)."""
    model, info = tiny.build(name)
    reft = attach(model, ReftConfig(layers=[0, 2], rank=3, positions="f2+l2", tied=tied))
    sides = ["right", "left"] if info["left_padding"] else ["right"]
    worst = 0.0
    for side in sides:
        ids, mask = tiny.random_ids(LENGTHS, side=side, seed=3)
        batch = logits_of(reft, info, ids, mask)
        for b in range(len(LENGTHS)):
            alone = logits_of(reft, info, *tiny.row_alone(ids, mask, b))[0]
            diff = (batch[b][mask[b].bool()] - alone).abs().max().item()
            worst = max(worst, diff)
            assert diff <= 1e-5, f"{name} {side}-padded row {b}: logits differ from alone by {diff:.3e}"
    base = logits_of(reft.detach(), info, ids, mask)
    assert (base - batch).abs().max() > 1e-3, "a paper-init adapter must change the logits"


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", tiny.ALL)
def test_edit_lands_exactly_at_the_computed_positions(name, side):
    """Block-1 output differs from the base at the spec's positions and nowhere else."""
    model, info = tiny.build(name)
    ids, mask = tiny.random_ids([8, 6, 3, 1], side=side, seed=4)
    prompt_lengths = torch.tensor([5, 6, 3, 1])  # row 0: tokens 5..7 are a completion, never edited
    block = find_blocks(model)[1][1]
    seen = []
    capture = block.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    base = logits_of(model, info, ids, mask, output_hidden_states=True)  # also installs HF's recorder hooks
    reft = attach(model, ReftConfig(layers=[1], rank=2, positions="f1+l2"))
    with torch.no_grad():
        out = reft(**tiny.model_inputs(info, ids, mask), prompt_lengths=prompt_lengths, output_hidden_states=True)
    capture.remove()
    changed = (seen[1] - seen[0]).abs().amax(-1) > 0  # (B, L)
    got = {tuple(x) for x in changed.nonzero().tolist()}
    assert got == expected_positions(mask, prompt_lengths, 1, 2), f"{name}: edited {sorted(got)}"
    # The hook is the mirror of the spec: the block's output is minireft.edit of the base one.
    spec = edit(seen[0].numpy(), mask.numpy(), prompt_lengths.numpy(), reft.config,
                layer_params(reft.adapter_state(), 1))
    assert_close(seen[1].numpy(), spec, atol=64 * unit_roundoff(np.float32) * (1 + np.abs(spec).max()),
                 what="hooked block output vs minireft.edit", case=name)
    # HF's output_hidden_states recorder (a hook installed before attach) sees the edited state.
    assert torch.equal(out.hidden_states[2], seen[1])
    assert not torch.equal(out.logits, base)


@pytest.mark.parametrize("name", tiny.ALL)
def test_bf16_base_trains_float32_interventions(name):
    model, _ = tiny.build(name, dtype=torch.bfloat16)
    ids, mask = tiny.random_ids(LENGTHS, side="right")
    reft = attach(model, PAPER)
    start = {k: p.detach().clone() for k, p in reft.named_trainable_parameters()}
    losses = tiny.train_steps(reft, ids, mask, steps=2)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    for k, p in reft.named_trainable_parameters():
        assert p.dtype == torch.float32, f"{k} is {p.dtype}"
        assert not torch.equal(p, start[k]), f"{k} did not change"
        if k.endswith(".R"):
            assert orthonormality_error(p.detach()) <= 1e-5
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize("kind", ["loreft", "direft"])
@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_analytic_backward_equals_autograd_through_the_model(name, kind, monkeypatch):
    """float64 model: grads of every adapter tensor with the analytic VJP == plain autograd."""
    model, info = tiny.build(name, dtype=torch.float64)
    ids, mask = tiny.random_ids(LENGTHS, side="right")
    config = ReftConfig(layers=[0, 2], rank=3, positions="f2+l2", intervention=kind, dtype="float64")

    def grads():
        reft = attach(model, config, seed=2)
        logits = reft(**tiny.model_inputs(info, ids, mask)).logits
        (logits * torch.linspace(-1, 1, logits.shape[-1], dtype=torch.float64)).sum().backward()
        out = {k: p.grad.clone() for k, p in reft.named_trainable_parameters()}
        reft.detach()
        return out

    analytic = grads()
    module = loreft if kind == "loreft" else direft
    monkeypatch.setattr(module, "apply", module.forward)  # Φ through torch autograd instead
    autograd = grads()
    for k, g in analytic.items():
        err = ((g - autograd[k]).abs().max() / autograd[k].abs().max()).item()
        assert err <= 1e-10, f"{name} {kind} {k}: relative gradient error {err:.3e}"


def test_tuple_returning_blocks_and_explicit_module_path():
    """A model outside HF: blocks return (h, extra); no layer count in its config."""
    model = _ToyModel()
    with pytest.raises(ValueError, match="module_path") as err:
        attach(model, PAPER)
    assert "'stack'" in str(err.value), "the error lists the candidate ModuleLists"
    ids = torch.randint(0, 50, (2, 6))
    base = model(ids)
    reft = attach(model, PAPER, module_path="stack")
    assert reft.config.module_path == "stack"
    out = reft(input_ids=ids)
    changed = (out - base).abs().amax(-1) > 0
    assert changed.sum() == 2 * 4  # f2+l2 of 6 tokens, per row
    reft.detach()
    ident = attach(model, ReftConfig(layers=[0], rank=2, positions="l1", init="identity", module_path="stack"))
    assert torch.equal(ident(input_ids=ids), base)


class _ToyModel(nn.Module):
    """Embedding → 3 blocks each returning (h, None) → head; config without a layer count."""

    def __init__(self, d=16):
        super().__init__()
        torch.manual_seed(0)
        self.config = types.SimpleNamespace(hidden_size=d)
        self.emb = nn.Embedding(50, d)
        self.stack = nn.ModuleList(_ToyBlock(d) for _ in range(3))

    def forward(self, input_ids=None, attention_mask=None):
        h = self.emb(input_ids)
        for block in self.stack:
            h = block(h)[0]
        return h


class _ToyBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, h):
        return h + torch.tanh(self.lin(h)), None


# ------------------------------------------------------------------ trainable parameters


def test_trainable_parameter_names_and_optimizer_groups():
    model, _ = tiny.build("llama")
    reft = attach(model, ReftConfig(layers=[0, 2], rank=3, positions="f2+l2"))
    names = [k for k, _ in reft.named_trainable_parameters()]
    assert names == [f"{layer}.{group}.{param}" for layer in (0, 2) for group in ("prefix", "suffix")
                     for param in ("R", "W", "b")]
    assert reft.num_trainable_parameters() == 4 * (2 * 3 * tiny.HIDDEN + 3)
    opt = ReftOptimizer.for_named_parameters(reft.named_trainable_parameters(), lr=1e-3, weight_decay=0.1)
    stiefel = next(g for g in opt.param_groups if g["manifold"] == "stiefel")
    assert len(stiefel["params"]) == 4 and all(p.shape == (3, tiny.HIDDEN) for p in stiefel["params"])
    assert reft.interventions["2"]["suffix"].R is stiefel["params"][-1]


def test_same_seed_same_adapter_and_tied_has_one_group():
    model, _ = tiny.build("gpt2")
    a = dict(attach(model, PAPER, seed=7).named_trainable_parameters())
    model2, _ = tiny.build("gpt2")
    b = dict(attach(model2, PAPER, seed=7).named_trainable_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)
    model3, _ = tiny.build("gpt2")
    tied = attach(model3, ReftConfig(layers=[1], positions="f3+l3", tied=True))
    assert list(tied.interventions["1"]) == ["tied"]
    assert isinstance(tied, ReftModel)


# ------------------------------------------------------------------ errors


def test_errors_are_clear():
    model, _ = tiny.build("llama")
    ids, mask = tiny.random_ids([4, 3], side="left")
    with pytest.raises(ValueError, match="malformed"):
        attach(model, ReftConfig(layers=[0], positions="x3"))
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.2"):
        attach(model, ReftConfig(layers=[1, 3]))
    with pytest.raises(ValueError, match="rank=33 is greater than the hidden size 32"):
        attach(model, ReftConfig(layers=[0], rank=33))
    with pytest.raises(ValueError, match="module_path='nope' names no submodule"):
        attach(model, PAPER, module_path="nope")
    with pytest.raises(ValueError, match="not a non-empty nn.ModuleList"):
        attach(model, PAPER, module_path="model.norm")
    reft = attach(model, PAPER)
    with pytest.raises(ValueError, match="already has ReFT interventions attached"):
        attach(model, PAPER)
    with pytest.raises(TypeError, match="already a ReftModel"):
        attach(reft, PAPER)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="row 1 is empty"):
        reft(input_ids=ids, attention_mask=empty)
    with pytest.raises(ValueError, match="row 0 has prompt_length 0"):
        reft(input_ids=ids, attention_mask=mask, prompt_lengths=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="row 1 has prompt_length 4"):
        reft(input_ids=ids, attention_mask=mask, prompt_lengths=torch.tensor([4, 4]))
    with pytest.raises(ValueError, match=r"prompt_lengths must be an integer tensor of shape \(2,\)"):
        reft(input_ids=ids, attention_mask=mask, prompt_lengths=torch.tensor([4.0, 3.0]))
    holes = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 0]])
    with pytest.raises(ValueError, match="not contiguous"):
        reft(input_ids=ids, attention_mask=holes)
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        reft(input_ids=ids, attention_mask=mask[:, None, None, :])
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    reft.train()
    with pytest.raises(NotImplementedError, match="gradient checkpointing"):
        reft(input_ids=ids, attention_mask=mask)


def test_an_input_of_no_tokens_is_one_line_naming_it():
    """(1, 0) input_ids: the bare model fails inside attention; ReftModel says which input, in one
    line, before the base model runs (generate() names the empty row, as the spec's edit does)."""
    model, _ = tiny.build("llama")
    reft = attach(model, PAPER)
    ids = torch.zeros(1, 0, dtype=torch.long)
    for kwargs in ({"input_ids": ids}, {"input_ids": ids, "attention_mask": torch.ones(1, 0, dtype=torch.long)},
                   {"inputs_embeds": torch.zeros(1, 0, 32)}):
        with pytest.raises(ValueError, match=r"^\w+ has no tokens \(shape \(1, 0") as err:
            reft(**kwargs)
        assert "\n" not in str(err.value) and str(err.value).startswith(next(iter(kwargs))), str(err.value)
    with pytest.raises(ValueError, match="^row 0 is empty"):
        reft.generate(input_ids=ids, attention_mask=torch.ones(1, 0, dtype=torch.long), max_new_tokens=1)


def test_unfindable_blocks_error_says_how_to_pass_module_path():
    model, _ = tiny.build("gpt2")
    model.config.n_layer = 7  # no ModuleList of 7 blocks
    with pytest.raises(ValueError, match=r"module_path='model\.layers'.*'transformer\.h' \(3 × GPT2Block\)"):
        attach(model, PAPER)
    assert attach(model, PAPER, module_path="transformer.h").module_path == "transformer.h"


# ------------------------------------------------------------------ CUDA


@needs_cuda
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_cuda_bf16_model(name):
    model, info = tiny.build(name, dtype=torch.bfloat16)
    model.cuda()
    ids, mask = (t.cuda() for t in tiny.random_ids(LENGTHS, side="right"))
    base = logits_of(model, info, ids, mask)
    ident = attach(model, ReftConfig(layers=[0, 2], positions="f2+l2", init="identity"))
    assert all(p.is_cuda and p.dtype == torch.float32 for _, p in ident.named_trainable_parameters())
    assert torch.equal(logits_of(ident, info, ids, mask), base)
    ident.detach()
    reft = attach(model, PAPER)
    losses = tiny.train_steps(reft, ids, mask, steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(orthonormality_error(p.detach()) <= 1e-5 for k, p in reft.named_trainable_parameters() if k.endswith(".R"))


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2"])
def test_left_padding_needs_no_position_ids_from_the_caller(name):
    """ReftModel.forward counts real tokens for decoder position ids itself, as generate() does."""
    model, _info = tiny.build(name)
    reft = attach(model, ReftConfig(layers=[0, 2], rank=3, positions="f2+l2"))
    ids, mask = tiny.random_ids(LENGTHS, side="left", seed=5)
    with torch.no_grad():
        batch = reft(input_ids=ids, attention_mask=mask).logits
        for b in range(len(LENGTHS)):
            row_ids, row_mask = tiny.row_alone(ids, mask, b)
            alone = reft(input_ids=row_ids, attention_mask=row_mask).logits[0]
            diff = (batch[b][mask[b].bool()] - alone).abs().max().item()
            assert diff <= 1e-5, f"{name} left-padded row {b} differs from alone by {diff:.3e}"
