"""The packed edit (an engine's flat batch): minireft.packed_edit and its torch mirror.

Properties of the spec: equal to the padded `edit` of the same sequences bit for bit (a
whole sequence is one block, as a padded row is); invariant to the order of the sequences
in the batch (bit for bit) and to chunking a prompt (the same tokens edited; the values
within rounding, since Φ then sees smaller blocks); decode tokens (t ≥ n) never edited.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import PackedCase, assert_close, packed_cases, unit_roundoff

from minireft import ReftConfig, edit, packed_edit
from minireft.edit import packed_groups


def pack(case: PackedCase, hs, order=None, chunks=None):
    """(h (T, d), t, n, a, rows) of the flat run (PackedCase.tokens)."""
    rows, t, n, a = case.tokens(order, chunks)
    h = np.stack([hs[j][i] for j, i in rows]) if rows else np.zeros((0, case.d), case.dtype)
    return h, t, n, a, rows


def unpack(out, rows, case) -> list[np.ndarray]:
    """[(counts[j], d)]: the flat result back per sequence."""
    seqs = [np.zeros((c, case.d), case.dtype) for c in case.counts]
    for value, (j, i) in zip(out, rows):
        seqs[j][i] = value
    return seqs


def padded(case: PackedCase, hs, adapters, side="left") -> list[np.ndarray]:
    """Each adapter's sequences through `edit` as one padded batch; no adapter: unchanged."""
    out = [h.copy() for h in hs]
    for k, (config, params) in enumerate(adapters):
        js = [j for j, a in enumerate(case.adapter_ids) if a == k]
        if not js:
            continue
        length = max(case.counts[j] for j in js)
        h = np.zeros((len(js), length, case.d), case.dtype)  # (B, L, d)
        mask = np.zeros((len(js), length), dtype=np.int64)  # (B, L)
        for b, j in enumerate(js):
            c = case.counts[j]
            cols = slice(length - c, length) if side == "left" else slice(0, c)
            h[b, cols], mask[b, cols] = hs[j], 1
        lengths = np.array([case.prompts[j] for j in js], dtype=np.int64)
        edited = edit(h, mask, lengths, config, params)
        for b, j in enumerate(js):
            c = case.counts[j]
            out[j] = edited[b, length - c:] if side == "left" else edited[b, :c]
    return out


@given(case=packed_cases(), side=st.sampled_from(("left", "right")))
@settings(max_examples=150)
def test_equals_the_padded_edit_bit_for_bit(case, side):
    hs, adapters = case.hs(), case.adapters()
    h, t, n, a, rows = pack(case, hs)
    got = unpack(packed_edit(h, t, n, a, adapters), rows, case)
    for j, (g, want) in enumerate(zip(got, padded(case, hs, adapters, side))):
        assert np.array_equal(g, want), f"sequence {j} (adapter {case.adapter_ids[j]}) differs"


@given(case=packed_cases(), data=st.data())
def test_invariant_to_batch_order(case, data):
    hs, adapters = case.hs(), case.adapters()
    order = data.draw(st.permutations(range(len(case.counts))))
    h, t, n, a, rows = pack(case, hs)
    want = unpack(packed_edit(h, t, n, a, adapters), rows, case)
    h, t, n, a, rows = pack(case, hs, order)
    got = unpack(packed_edit(h, t, n, a, adapters), rows, case)
    for j in range(len(hs)):
        assert np.array_equal(got[j], want[j]), f"sequence {j} changed with the order {order}"


@given(case=packed_cases(), data=st.data())
def test_invariant_to_chunking_a_prompt(case, data):
    """Sequences cut anywhere and interleaved: the same tokens edited (the rest bit for bit h),
    the edited values within a few ulps (Φ's block is smaller: BLAS sums in another order)."""
    hs, adapters = case.hs(), case.adapters()
    chunks = [sorted(data.draw(st.sets(st.integers(1, max(c - 1, 1)), max_size=3)) if c > 1 else [])
              for c in case.counts]
    h, t, n, a, rows = pack(case, hs)
    want = unpack(packed_edit(h, t, n, a, adapters), rows, case)
    h, t, n, a, rows = pack(case, hs, chunks=chunks)
    got = unpack(packed_edit(h, t, n, a, adapters), rows, case)
    u = unit_roundoff(case.dtype)
    for j in range(len(hs)):
        same = np.all(want[j] == hs[j], axis=1)  # (c,) rows the whole sequence left alone
        assert np.array_equal(got[j][same], hs[j][same]), f"sequence {j}: chunks {chunks[j]} edited more"
        assert not np.any(np.all(got[j][~same] == hs[j][~same], axis=1)), f"sequence {j}: edited less"
        assert_close(got[j], want[j], atol=64 * u * (1 + np.abs(want[j]).max()), what=f"sequence {j}")


@given(case=packed_cases())
def test_decode_tokens_are_never_edited(case):
    """Tokens at t ≥ n (generated) come back bit for bit, in a prefill batch and in a decode
    step (one token per sequence, the engine's form after the prompt)."""
    hs, adapters = case.hs(), case.adapters()
    h, t, n, a, rows = pack(case, hs)
    out = packed_edit(h, t, n, a, adapters)
    assert np.array_equal(out[t >= n], h[t >= n])
    step = np.stack([hs[j][-1] for j in range(len(hs))])  # (S, d)
    last = np.array(case.counts, dtype=np.int64) - 1 + 5  # (S,) positions past every prompt
    ids = np.array(case.adapter_ids, dtype=np.int64)
    assert np.array_equal(packed_edit(step, last, np.array(case.prompts), ids, adapters), step)


@given(case=packed_cases(max_adapters=2))
def test_edits_exactly_the_rules_positions(case):
    """A token is edited iff its adapter's group positions for its n hold its t and t < n."""
    hs, adapters = case.hs(), case.adapters()
    h, t, n, a, rows = pack(case, hs)
    out = packed_edit(h, t, n, a, adapters)
    for i, (j, pos) in enumerate(rows):
        k = case.adapter_ids[j]
        picked = k >= 0 and any(m[0] for m in packed_groups(np.array([pos]), case.prompts[j],
                                                            case.configs[k]).values())
        assert picked == (not np.array_equal(out[i], h[i])), f"token {i} (sequence {j}, t={pos})"
        assert not picked or pos < case.prompts[j]


def test_an_adapter_without_this_layer_and_no_adapter_leave_h():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((6, 4))  # (T, d)
    t, n = np.arange(6), np.full(6, 6)
    assert np.array_equal(packed_edit(h, t, n, np.full(6, -1), []), h)
    assert np.array_equal(packed_edit(h, t, n, np.zeros(6, dtype=np.int64), [None]), h)
    empty = np.zeros((0, 4))
    assert packed_edit(empty, [], [], [], []).shape == (0, 4)


def test_prompt_tokens_positions_by_hand():
    """f1+l2 untied on a 5-token prompt: prefix {0}, suffix {3, 4}; then 2 generated tokens."""
    config = ReftConfig(layers=(0,), rank=1, positions="f1+l2", intervention="direft")
    ones = {"W1": np.ones((1, 2)), "W2": np.ones((1, 2)), "b": np.zeros(1)}
    params = {"prefix": ones, "suffix": {**ones, "b": np.ones(1)}}
    h = np.ones((7, 2))  # Φ_prefix(1, 1) = (3, 3), Φ_suffix(1, 1) = (4, 4)
    out = packed_edit(h, np.arange(7), np.full(7, 5), np.zeros(7, dtype=np.int64), [(config, params)])
    assert out[:, 0].tolist() == [3, 1, 1, 4, 4, 1, 1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(h=np.zeros((2, 2, 2))), r"h must be a \(tokens, hidden\)"),
    (dict(positions=[0]), r"positions must be an integer array of shape \(2,\)"),
    (dict(positions=[0, -1]), "token 1 has positions -1"),
    (dict(prompt_lengths=[0, 2]), "token 0 has prompt_lengths 0"),
    (dict(adapter_ids=[0, 1]), "token 1 has adapter_id 1, but only 1 adapters"),
    (dict(adapter_ids=[-2, 0]), "token 0 has adapter_ids -2"),
    (dict(adapters=[("config", {})]), "adapters\\[0\\]: config must be a minireft.ReftConfig"),
    (dict(adapters=[1]), "adapters\\[0\\] must be a \\(ReftConfig, params\\) pair"),
])
def test_bad_input_is_named(kwargs, message):
    config = ReftConfig(layers=(0,), rank=1, positions="f1", intervention="direft")
    p = {"prefix": {"W1": np.ones((1, 2)), "W2": np.ones((1, 2)), "b": np.zeros(1)}}
    args = dict(h=np.zeros((2, 2)), positions=[0, 1], prompt_lengths=[2, 2], adapter_ids=[0, 0],
                adapters=[(config, p)])
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        packed_edit(**args)


# ---------------------------------------------------------------- the torch mirror


def tensors(x):
    import torch

    if isinstance(x, dict):
        return {k: tensors(v) for k, v in x.items()}
    return torch.from_numpy(np.ascontiguousarray(x))


@given(case=packed_cases(interventions=("loreft", "direft", "noreft", "consreft", "lobireft",
                                         "ortho_direft")),
       data=st.data())
def test_torch_packed_edit_is_the_spec(case, data):
    """Values within rounding of the spec (chunked and reordered batches too); unedited tokens
    (the bare model's, the generated ones) are h's bit for bit."""
    pytest.importorskip("torch")
    mt = pytest.importorskip("minireft.torch")
    hs, adapters = case.hs(), case.adapters()
    chunks = [sorted(data.draw(st.sets(st.integers(1, max(c - 1, 1)), max_size=2)) if c > 1 else [])
              for c in case.counts]
    order = data.draw(st.permutations(range(len(case.counts))))
    h, t, n, a, _ = pack(case, hs, order, chunks)
    want = packed_edit(h, t, n, a, adapters)
    tadapters = [(c, tensors(p)) for c, p in adapters]
    got = mt.packed_edit(tensors(h), tensors(t), tensors(n), tensors(a), tadapters).numpy()
    assert got.dtype == h.dtype
    assert_close(got, want, atol=64 * unit_roundoff(case.dtype) * (1 + np.abs(want).max()), what="out")
    same = np.all(want == h, axis=1)  # (T,) tokens the spec left alone
    assert np.array_equal(got[same], h[same])


def test_torch_packed_edit_names_the_bad_token():
    torch = pytest.importorskip("torch")
    mt = pytest.importorskip("minireft.torch")
    h = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="token 2 has prompt_lengths 0"):
        mt.packed_edit(h, torch.arange(3), torch.tensor([2, 2, 0]), torch.zeros(3, dtype=torch.long), [None])
    with pytest.raises(ValueError, match="token 0 has adapter_id 1, but only 1 adapters"):
        mt.packed_edit(h, torch.arange(3), torch.full((3,), 3), torch.ones(3, dtype=torch.long), [None])
