"""Gradient checkpointing with ReFT hooks: the same gradients as without it, every recomputed
block edited as in the first pass, and checkpointing enabled behind ReftModel's back refused.

Tiny random models (tests/tiny_models.py), float32, one thread: each test takes seconds.
"""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import PAIRS, QUIET, params_of, reft, tiny_tokenizer
from tiny_models import build

from minireft.hf import training
from minireft.hf.data import collate, encode_examples
from minireft.hf.loss import loss_sum
from minireft.hf.modes import enter_train_mode, restore_modes

pytestmark = [pytest.mark.filterwarnings("ignore:this run takes:UserWarning"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py

EXAMPLES = [{"prompt": f"question {i}?", "completion": "yes" if i % 2 else "no!"} for i in range(6)]




def _gradients(model, *, checkpointing: bool, dropout: float = 0.0) -> tuple[dict, int]:
    """(gradient of one training step's loss per trainable parameter, forward calls of block 1's
    attention) for a fresh adapter on `model`, with or without checkpointing."""
    r = reft(model, layers=(0, 1, 2), positions="f2+l2", dropout=dropout)
    attention_calls = []
    handle = model.model.layers[1].self_attn.register_forward_hook(lambda *a: attention_calls.append(1))
    batch = collate(encode_examples(tiny_tokenizer(), EXAMPLES), 0, padding_side="left")
    modes = enter_train_mode(r, checkpointing)
    try:
        torch.manual_seed(0)  # the intervention dropout's draws
        loss, _ = loss_sum(r, batch, "lm")
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in r.named_trainable_parameters()}
    finally:
        restore_modes(modes)
        handle.remove()
        r.detach()
    return grads, len(attention_calls)


def max_relative(a: dict, b: dict) -> float:
    return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in b)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpointing_gives_the_same_gradients(dropout):
    model, _ = build("llama")
    plain, calls_plain = _gradients(model, checkpointing=False, dropout=dropout)
    ckpt, calls_ckpt = _gradients(model, checkpointing=True, dropout=dropout)
    assert calls_plain == 1 and calls_ckpt == 2, "block 1 was not recomputed in backward"
    err = max_relative(ckpt, plain)
    assert err <= 1e-6, f"checkpointed gradients differ by {err:.2e} (relative)"
    assert not model.is_activation_checkpointing, "checkpointing left enabled after training"


class _CheckpointedCall(torch.nn.Module):
    """Runs block(...) -- its forward hooks included -- inside torch.utils.checkpoint, as
    transformers versions that checkpoint a block's __call__ do: the ReFT hook then runs
    again in backward and must find the first pass's plan (context_fn)."""

    def __init__(self, block, context_fn):
        super().__init__()
        self.block, self.context_fn = block, context_fn
        self.attention_type = getattr(block, "attention_type", None)

    def forward(self, *args, **kwargs):
        def call(*a):
            return self.block(*a, **kwargs)
        return torch.utils.checkpoint.checkpoint(call, *args, use_reentrant=False,
                                                 context_fn=self.context_fn)


def _hooks_inside_gradients(context) -> tuple[dict, int]:
    model, _ = build("llama")
    r = reft(model, layers=(0, 1, 2), positions="f2+l2")
    layers = model.model.layers
    for i in range(len(layers)):
        layers[i] = _CheckpointedCall(layers[i], context(r))
    batch = collate(encode_examples(tiny_tokenizer(), EXAMPLES), 0, padding_side="left")
    modes = enter_train_mode(r)
    try:
        r._num_edits = 0
        loss, _ = loss_sum(r, batch, "lm")
        edits_forward = r._num_edits
        loss.backward()
        assert edits_forward == 3
        return {n: p.grad.detach().clone() for n, p in r.named_trainable_parameters()}, r._num_edits
    finally:
        restore_modes(modes)


def test_a_recomputed_hook_edits_as_in_the_first_pass():
    model, _ = build("llama")
    plain, _ = _gradients(model, checkpointing=False)
    ours, edits = _hooks_inside_gradients(lambda r: r._checkpoint_contexts)
    assert edits == 6, "each hooked block is edited once in forward and once in its recompute"
    err = max_relative(ours, plain)
    assert err <= 1e-6, f"recomputed edits differ: gradients off by {err:.2e} (relative)"
    # Without the plan reinstated the recompute runs unedited: torch sees a different
    # computation (fewer saved tensors) and stops; nothing goes silently wrong.
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        _hooks_inside_gradients(lambda r: lambda: (contextlib.nullcontext(), contextlib.nullcontext()))


def test_train_with_checkpointing_matches_train_without():
    runs = {}
    for checkpointing in (False, True):
        model, _ = build("llama")
        r = reft(model, layers=(0, 2))
        result = training.train(r, tiny_tokenizer(), PAIRS * 2, batch_size=4, epochs=2, lr=1e-2,
                                gradient_checkpointing=checkpointing, **QUIET)
        runs[checkpointing] = (params_of(r), result.losses)
    (p0, l0), (p1, l1) = runs[False], runs[True]
    assert max(abs(a - b) for a, b in zip(l0, l1)) <= 1e-6 * max(abs(x) for x in l0)
    for name in p0:
        assert torch.allclose(p0[name], p1[name], rtol=0, atol=1e-6), name


def test_checkpointing_enabled_on_the_base_model_is_refused():
    model, _ = build("llama")
    r = reft(model, layers=(1,))
    model.activation_checkpointing_enable()
    with pytest.raises(NotImplementedError, match=r"reft_model.gradient_checkpointing_enable\(\)"):
        training.train(r, tiny_tokenizer(), PAIRS, batch_size=2, epochs=1, **QUIET)
