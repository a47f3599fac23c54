"""The rest of the ReFT family in the PyTorch mirror and in a model: NoReFT, ConsReFT,
LobiReFT, orthogonal DiReFT.

The mirror agrees with the spec in float64 to 1e-12 relative (forward, VJP, the analytic
backward against autograd, the in-model edit); attached to a tiny model, each kind starts
at the base model's logits with its identity init (ConsReFT has none), trains (the loss
falls, R stays orthonormal), and survives save_pretrained / from_pretrained bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models as tiny
from strategies import FAMILY

import minireft
import minireft.torch as mt
from minireft import ReftConfig
from minireft.hf import ReftModel, attach
from minireft.torch.stiefel import orthonormality_error

NEW = ("noreft", "consreft", "lobireft", "ortho_direft")
IDENTITY = ("noreft", "lobireft", "ortho_direft")
RTOL64 = 1e-12
SHAPES = [(1, 1, ()), (7, 2, (5,)), (64, 8, (2, 3)), (576, 4, (3,)), (8, 8, (4,))]


def rel_err(got, expected) -> float:
    """max|got − expected| / max(max|expected|, 1): relative to the scale of the expected value."""
    got = mt.to_numpy(got)
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1.0))


def spec_case(kind, d, r, shape, seed):
    rng = np.random.default_rng(seed)
    params = FAMILY[kind].init(d, r, rng, kind="paper", dtype=np.float64)
    h = rng.standard_normal((*shape, d))
    return params, h, rng.standard_normal(h.shape)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------- the mirror


@pytest.mark.parametrize("kind", NEW)
@pytest.mark.parametrize("d, r, shape", SHAPES)
def test_forward_and_vjp_match_spec_float64(kind, d, r, shape):
    spec, mirror = FAMILY[kind], getattr(mt, kind)
    assert mirror.PARAMS == spec.PARAMS and mirror.INITS == spec.INITS
    params, h, dout = spec_case(kind, d, r, shape, seed=d * 10 + r)
    tparams = {k: t(v) for k, v in params.items()}
    err = rel_err(mirror.forward(t(h), **tparams), spec.forward(h, **params))
    assert err <= RTOL64, f"{kind} forward d={d} r={r}: rel err {err:.2e}"
    got, want = mirror.vjp(t(h), **tparams, dout=t(dout)), spec.vjp(h, **params, dout=dout)
    assert len(got) == len(want) == 1 + len(spec.PARAMS)
    for name, g, w in zip(("dh", *spec.PARAMS), got, want):
        assert tuple(g.shape) == w.shape, (kind, name)
        err = rel_err(g, w)
        assert err <= RTOL64, f"{kind} vjp d{name} d={d} r={r}: rel err {err:.2e}"


@pytest.mark.parametrize("kind", NEW)
def test_analytic_backward_matches_autograd_and_gradcheck(kind):
    """The autograd.Function's backward (the spec's VJP) equals autograd through the plain
    forward, and passes torch's gradcheck."""
    mirror = getattr(mt, kind)
    params, h, dout = spec_case(kind, 16, 4, (3, 5), seed=1)
    leaves = [t(h).requires_grad_()] + [t(params[k]).requires_grad_() for k in mirror.PARAMS]
    mirror.apply(*leaves).backward(t(dout))
    analytic = [x.grad.clone() for x in leaves]
    for x in leaves:
        x.grad = None
    mirror.forward(*leaves).backward(t(dout))
    for name, a, x in zip(("h", *mirror.PARAMS), analytic, leaves):
        err = rel_err(a, x.grad.numpy())
        assert err <= RTOL64, f"{kind} d{name}: analytic vs autograd rel err {err:.2e}"
    small, hs, _ = spec_case(kind, 6, 2, (2,), seed=3)
    args = [t(hs).requires_grad_()] + [t(small[k]).requires_grad_() for k in mirror.PARAMS]
    assert torch.autograd.gradcheck(mirror.apply, args)


@pytest.mark.parametrize("kind", NEW)
def test_mirror_init_matches_the_spec_contract(kind):
    mirror = getattr(mt, kind)
    p = mirror.init(16, 4, torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape) for k, v in p.items()} == {k: (4,) if k == "b" else (4, 16) for k in mirror.PARAMS}
    assert all(v.dtype == torch.float32 for v in p.values())
    if "R" in p:
        assert orthonormality_error(p["R"]) <= 1e-6
    if kind in IDENTITY:
        ident = mirror.init(16, 4, torch.Generator().manual_seed(0), kind="identity")
        h = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
        assert torch.equal(mirror.forward(h, **ident), h)
    else:
        with pytest.raises(ValueError, match="ConsReFT has no identity init"):
            mirror.init(16, 4, kind="identity")


@pytest.mark.parametrize("kind", NEW)
def test_edit_mirror_matches_spec_float64(kind):
    """minireft.torch.edit / edit_vjp dispatch to the kind and agree with minireft.edit."""
    config = ReftConfig(layers=[0], rank=3, positions="f2+l2", intervention=kind)
    rng = np.random.default_rng(5)
    mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    h, dout = rng.standard_normal((3, 7, 9)), rng.standard_normal((3, 7, 9))
    params = {g: FAMILY[kind].init(9, 3, rng, dtype=np.float64) for g in config.groups}
    tparams = {g: {k: t(v) for k, v in p.items()} for g, p in params.items()}
    want = minireft.edit(h, mask, None, config, params)
    assert not np.array_equal(want, h)
    assert rel_err(mt.edit(t(h), t(mask), None, config, tparams), want) <= RTOL64
    dh, grads = minireft.edit_vjp(h, mask, None, config, params, dout)
    tdh, tgrads = mt.edit_vjp(t(h), t(mask), None, config, tparams, t(dout))
    assert rel_err(tdh, dh) <= RTOL64
    for g in grads:
        for k in grads[g]:
            assert rel_err(tgrads[g][k], grads[g][k]) <= RTOL64, (g, k)


# ---------------------------------------------------------------- in a model

LENGTHS = [6, 4, 2]


def _logits(model, info, ids, mask):
    with torch.no_grad():
        return model(**tiny.model_inputs(info, ids, mask)).logits


def _orthonormality(reft) -> float:
    errors = [orthonormality_error(p.detach()) for k, p in reft.named_trainable_parameters() if k.endswith(".R")]
    return max(errors) if errors else 0.0


@pytest.mark.parametrize("kind", IDENTITY)
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_identity_init_gives_the_base_logits(kind, name):
    model, info = tiny.build(name)
    ids, mask = tiny.random_ids(LENGTHS, side="right")
    base = _logits(model, info, ids, mask)
    reft = attach(model, ReftConfig(layers=[0, 1, 2], rank=4, positions="f2+l2", intervention=kind,
                                    init="identity"))
    assert torch.equal(_logits(reft, info, ids, mask), base), "Φ(h) = h exactly at the identity init"
    assert reft._num_edits == 3


def test_consreft_identity_is_refused_before_attaching():
    model, _ = tiny.build("llama")
    with pytest.raises(ValueError, match="ConsReFT has no identity init"):
        attach(model, ReftConfig(layers=[0], intervention="consreft", init="identity"))


@pytest.mark.parametrize("kind", NEW)
def test_train_save_load_round_trip(kind, tmp_path):
    """A few ReftOptimizer steps lower the loss and keep every R orthonormal (the optimizer's
    rule: every parameter named R is on the manifold); the saved adapter reloads into a fresh
    model with the same tensors and the same logits, bit for bit."""
    config = ReftConfig(layers=[0, 2], rank=3, positions="f2+l2", intervention=kind)
    model, info = tiny.build("llama")
    ids, mask = tiny.random_ids(LENGTHS, side="right")
    reft = attach(model, config)
    names = {k.split(".")[-1] for k, _ in reft.named_trainable_parameters()}
    assert names == set(FAMILY[kind].PARAMS)
    losses = tiny.train_steps(reft, ids, mask, steps=6, lr=3e-2)
    assert losses[-1] < losses[0], losses
    assert _orthonormality(reft) <= 1e-5
    want = _logits(reft, info, ids, mask)
    path = reft.save_pretrained(tmp_path / "adapter")
    loaded_config, params = minireft.io.load_adapter(path)
    assert loaded_config == config and set(params) == set(config.tensor_shapes(tiny.HIDDEN))
    fresh, _ = tiny.build("llama")
    loaded = ReftModel.from_pretrained(fresh, path)
    saved = dict(reft.named_trainable_parameters())
    for k, p in loaded.named_trainable_parameters():
        assert torch.equal(p, saved[k]), k
    assert torch.equal(_logits(loaded, info, ids, mask), want)
