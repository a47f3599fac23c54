"""The in-model edit: minireft.edit (the spec) and minireft.torch.edit (its mirror).

Properties of the spec, exact (a row is edited alone, so these hold bit for bit): a row's
result does not depend on its batch-mates or on its padding side; exactly the rule's
positions change; the identity init changes nothing. Bad rows are rejected with the row
named. The VJP agrees with central differences; the torch mirror agrees with the spec.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    EditCase,
    assert_close,
    directional_fd_errors,
    dtypes,
    edit_cases,
    unit_roundoff,
)

from minireft import ReftConfig, direft, edit, edit_vjp, loreft
from minireft.edit import edited_positions, layer_params
from minireft.positions import intervention_positions

KINDS = {"loreft": loreft, "direft": direft}


def run(case: EditCase, *, sides=None, length=None, h=None, params=None):
    h = case.h() if h is None else h
    mask = case.mask(sides, length)
    return edit(h, mask, case.prompt_lengths(), case.config, case.params() if params is None else params)


def real_columns(mask_row) -> list[int]:
    return np.flatnonzero(mask_row).tolist()


# ---------------------------------------------------------------- which positions


@given(case=edit_cases())
def test_edited_positions_are_the_rule_applied_to_the_real_tokens(case):
    """Group columns = the real columns at indices intervention_positions(n_b, p, s)
    (indexing the list of real columns, not adding an offset: an independent construction)."""
    mask = case.mask()
    got = edited_positions(mask, case.prompt_lengths(), case.config)
    p, s = case.config.prefix_suffix
    for b, count in enumerate(case.counts):
        real = real_columns(mask[b])
        n = count if case.prompts is None else case.prompts[b]
        pre, suf = intervention_positions(n, p, s, rule=case.config.position_rule)
        want = {"tied": [real[i] for i in pre + suf], "prefix": [real[i] for i in pre],
                "suffix": [real[i] for i in suf]}
        for group in case.config.groups:
            assert got[group][b] == want[group], (b, group)
            assert all(t < real[n - 1] + 1 for t in got[group][b]), "a completion token was edited"


@given(case=edit_cases())
def test_exactly_the_rules_positions_change(case):
    """Unedited entries are h's bit for bit; each edited vector is Φ_g of that vector alone."""
    h, params = case.h(), case.params()
    out = run(case, h=h, params=params)
    assert out.dtype == h.dtype and out.shape == h.shape
    edited = np.zeros(h.shape[:2], dtype=bool)
    math = KINDS[case.config.intervention]
    u = unit_roundoff(case.dtype)
    for group, per_row in edited_positions(case.mask(), case.prompt_lengths(), case.config).items():
        for b, cols in enumerate(per_row):
            for t in cols:
                assert not edited[b, t], f"({b}, {t}) is in two groups"
                edited[b, t] = True
                want = math.forward(h[b, t], *(params[group][k] for k in math.PARAMS))
                assert_close(out[b, t], want, atol=64 * u * (1 + np.abs(want).max()), what=group)
                assert not np.array_equal(out[b, t], h[b, t]), f"({b}, {t}) was not edited"
    assert np.array_equal(out[~edited], h[~edited])


@given(case=edit_cases())
def test_a_row_does_not_depend_on_its_batch_mates(case):
    h, params, mask, n = case.h(), case.params(), case.mask(), case.prompt_lengths()
    out = edit(h, mask, n, case.config, params)
    for b in range(len(case.counts)):
        alone = edit(h[b:b + 1], mask[b:b + 1], None if n is None else n[b:b + 1], case.config, params)
        assert np.array_equal(alone[0], out[b]), f"row {b} changed with its batch-mates"


@given(case=edit_cases(), other=st.data())
def test_padding_side_and_width_do_not_change_the_real_tokens(case, other):
    """The same rows padded on other sides and to another width: the real tokens come out the same."""
    sides = tuple(other.draw(st.lists(st.sampled_from(("left", "right")), min_size=len(case.counts),
                                      max_size=len(case.counts))))
    length = case.length + other.draw(st.integers(0, 3))
    h, params = case.h(), case.params()
    mask, mask2 = case.mask(), case.mask(sides, length)
    h2 = np.full((len(case.counts), length, case.d), 7.0, dtype=case.dtype)  # other pad states
    for b in range(len(case.counts)):
        h2[b, real_columns(mask2[b])] = h[b, real_columns(mask[b])]
    out = run(case, h=h, params=params)
    out2 = run(case, sides=sides, length=length, h=h2, params=params)
    for b in range(len(case.counts)):
        assert np.array_equal(out[b, real_columns(mask[b])], out2[b, real_columns(mask2[b])]), b


@given(case=edit_cases())
def test_identity_init_leaves_h_unchanged(case):
    h = case.h()
    assert np.array_equal(run(case, h=h, params=case.params("identity")), h)


@given(dtype=dtypes)
def test_h_is_not_modified(dtype):
    case = EditCase((3, 1), ("left", "right"), 4, None, ReftConfig(layers=0, rank=2, positions="f1+l1"),
                    5, np.dtype(dtype), 0)
    h = case.h()
    before = h.copy()
    run(case, h=h)
    assert np.array_equal(h, before)


# ---------------------------------------------------------------- rows that cannot be edited

CONFIG = ReftConfig(layers=0, rank=2, positions="f1+l2")
GOOD = np.array([[0, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])  # left, right, no padding
BAD_ROWS = {
    "empty": ([0, 0, 0, 0], None, "is empty"),
    "hole": ([1, 0, 1, 1], None, "not contiguous"),
    "zero prompt": ([1, 1, 1, 1], 0, "prompt_length 0"),
    "long prompt": ([0, 1, 1, 1], 4, "prompt_length 4"),
}


def bad_batch(kind: str, row: int):
    mask = GOOD.copy()
    mask[row], n, words = np.array(BAD_ROWS[kind][0]), BAD_ROWS[kind][1], BAD_ROWS[kind][2]
    lengths = None
    if n is not None:
        lengths = mask.sum(1)
        lengths[row] = n
    return mask, lengths, words


def spec_params(config=CONFIG, d=5, dtype=np.float64):
    rng = np.random.default_rng(0)
    return {g: KINDS[config.intervention].init(d, config.rank, rng, dtype=dtype) for g in config.groups}


@pytest.mark.parametrize("row", range(3))
@pytest.mark.parametrize("kind", BAD_ROWS)
def test_a_row_that_cannot_be_edited_is_named(kind, row):
    mask, lengths, words = bad_batch(kind, row)
    h = np.zeros((3, 4, 5))
    with pytest.raises(ValueError, match=f"row {row}.*{words}|row {row}'s real tokens are {words}"):
        edit(h, mask, lengths, CONFIG, spec_params())
    if row < 2:  # a later bad row as well: the first is named
        mask[2] = 0
        with pytest.raises(ValueError, match=f"^row {row}"):
            edit(h, mask, lengths, CONFIG, spec_params())


@pytest.mark.parametrize("args, words", [
    ({"attention_mask": np.array([[0, 2, 1, 1]] * 3)}, "0 .padding. and 1"),
    ({"attention_mask": GOOD[:, :3]}, r"attention_mask must have shape \(3, 4\)"),
    ({"prompt_lengths": np.array([1.0, 2.0, 3.0])}, "prompt_lengths must be None or an integer"),
    ({"prompt_lengths": np.array([1, 2])}, r"shape \(3,\)"),
    ({"params": {"tied": {}}}, r"groups \['prefix', 'suffix'\]"),
    ({"params": {"prefix": {"R": 0}, "suffix": {"R": 0}}}, r"must hold \['R', 'W', 'b'\]"),
    ({"h": np.zeros((3, 4))}, "h must be a .batch, length, hidden."),
])
def test_bad_arguments_name_the_argument(args, words):
    call = {"h": np.zeros((3, 4, 5)), "attention_mask": GOOD, "prompt_lengths": None, "config": CONFIG,
            "params": spec_params(), **args}
    with pytest.raises(ValueError, match=words):
        edit(**call)


def test_layer_params_regroups_an_adapter():
    state = {f"{layer}.{g}.{k}": np.full(1, layer) for layer in (3, 8) for g in ("prefix", "suffix")
             for k in ("R", "W", "b")}
    got = layer_params(state, 8)
    assert set(got) == {"prefix", "suffix"} and all(set(p) == {"R", "W", "b"} for p in got.values())
    assert all(v[0] == 8 for p in got.values() for v in p.values())
    with pytest.raises(ValueError, match=r"no tensor of layer 5.*\['3', '8'\]"):
        layer_params(state, 5)


# ---------------------------------------------------------------- the VJP


@settings(max_examples=20)
@given(case=edit_cases(dtype=np.float64))
def test_edit_vjp_agrees_with_central_differences(case):
    """⟨dout, ∂edit/∂x · V⟩ by central differences = ⟨grad x, V⟩, for h and every parameter."""
    h, params, dout, mask, n = case.h(), case.params(), case.dout(), case.mask(), case.prompt_lengths()
    dh, grads = edit_vjp(h, mask, n, case.config, params, dout)
    flat = {"h": h, **{f"{g}.{k}": v for g, p in params.items() for k, v in p.items()}}
    flat_grads = {"h": dh, **{f"{g}.{k}": v for g, p in grads.items() for k, v in p.items()}}

    def f(**args):
        nested = {g: {k: args[f"{g}.{k}"] for k in params[g]} for g in params}
        return edit(args["h"], mask, n, case.config, nested)

    for name in flat:
        for fd, an, err in directional_fd_errors(f, flat, flat_grads, dout, name, n_dirs=2):
            assert err < 1e-7 or abs(fd - an) < 1e-9, (name, fd, an, err)


@given(case=edit_cases())
def test_edit_vjp_passes_dout_through_unedited_positions(case):
    h, dout, mask, n = case.h(), case.dout(), case.mask(), case.prompt_lengths()
    dh, grads = edit_vjp(h, mask, n, case.config, case.params(), dout)
    edited = np.zeros(h.shape[:2], dtype=bool)
    for group, per_row in edited_positions(mask, n, case.config).items():
        for b, cols in enumerate(per_row):
            edited[b, cols] = True
        if not any(per_row):
            assert all(not np.any(g) for g in grads[group].values()), f"{group} edits nothing"
    assert np.array_equal(dh[~edited], dout[~edited]) and dh.dtype == h.dtype


# ---------------------------------------------------------------- the torch mirror


# torch is imported per test, so that the spec's tests above run without it.


def mirror():
    """(torch, minireft.torch), or skip."""
    return pytest.importorskip("torch"), pytest.importorskip("minireft.torch")


def tensors(x):
    import torch

    if isinstance(x, dict):
        return {k: tensors(v) for k, v in x.items()}
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x))


@given(case=edit_cases())
def test_torch_edit_is_the_spec(case):
    """Values within rounding of the spec; unedited entries are h's bit for bit; edit_vjp and
    autograd through the mirror agree with the spec's VJP."""
    _, mt = mirror()
    h, params, dout, mask, n = case.h(), case.params(), case.dout(), case.mask(), case.prompt_lengths()
    want = edit(h, mask, n, case.config, params)
    tol = 64 * unit_roundoff(case.dtype) * (1 + np.abs(want).max())
    th, tparams = tensors(h).requires_grad_(), tensors(params)
    for p in tparams.values():
        for v in p.values():
            v.requires_grad_()
    got = mt.edit(th, tensors(mask), tensors(n), case.config, tparams)
    assert got.dtype == th.dtype
    assert_close(got.detach().numpy(), want, atol=tol, what="out")
    same = want == h  # unedited entries (an edited entry equal to h has probability 0)
    assert np.array_equal(got.detach().numpy()[same], h[same])
    want_dh, want_grads = edit_vjp(h, mask, n, case.config, params, dout)
    dh, grads = mt.edit_vjp(th.detach(), tensors(mask), tensors(n), case.config, tparams, tensors(dout))
    got.backward(tensors(dout))
    gtol = 64 * unit_roundoff(case.dtype) * (1 + np.abs(want_dh).max()) * max(8, sum(case.counts))
    assert_close(dh.detach().numpy(), want_dh, atol=gtol, what="dh")
    assert_close(th.grad.numpy(), want_dh, atol=gtol, what="autograd dh")
    for g in params:
        for k in params[g]:
            scale = 1 + np.abs(want_grads[g][k]).max()
            assert_close(grads[g][k].detach().numpy(), want_grads[g][k], atol=gtol * scale, what=f"{g}.{k}")
            assert_close(tparams[g][k].grad.numpy(), want_grads[g][k], atol=gtol * scale,
                         what=f"autograd {g}.{k}")


@pytest.mark.parametrize("row", range(3))
@pytest.mark.parametrize("kind", BAD_ROWS)
def test_torch_names_the_same_bad_row(kind, row):
    torch, mt = mirror()
    mask, lengths, words = bad_batch(kind, row)
    params = tensors(spec_params())
    with pytest.raises(ValueError, match=f"row {row}.*{words}|row {row}'s real tokens are {words}"):
        mt.edit(torch.zeros(3, 4, 5, dtype=torch.float64), tensors(mask), tensors(lengths), CONFIG, params)


@pytest.mark.parametrize("batch", [1, 2, 0])
def test_a_batch_of_no_columns_is_refused_as_the_spec_refuses_it(batch):
    """(B, 0): every row is empty, named as the spec names it; (0, 0) has no row and edits nothing."""
    torch, mt = mirror()
    h, mask = np.zeros((batch, 0, 5)), np.ones((batch, 0), dtype=np.int64)
    if batch == 0:
        assert edit(h, mask, None, CONFIG, spec_params()).shape == (0, 0, 5)
        assert mt.edit(tensors(h), tensors(mask), None, CONFIG, tensors(spec_params())).shape == (0, 0, 5)
        return
    with pytest.raises(ValueError, match="^row 0 is empty"):
        edit(h, mask, None, CONFIG, spec_params())
    with pytest.raises(ValueError, match="^row 0 is empty"):
        mt.edit(tensors(h), tensors(mask), None, CONFIG, tensors(spec_params()))


def test_torch_rejects_a_mask_that_is_not_0_1():
    torch, mt = mirror()
    with pytest.raises(ValueError, match="0 .padding. and 1"):
        mt.edit(torch.zeros(1, 3, 5, dtype=torch.float64), torch.tensor([[0, 2, 1]]), None, CONFIG,
                tensors(spec_params()))
