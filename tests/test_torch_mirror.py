"""The PyTorch mirror agrees with the NumPy spec: float64 to 1e-12 relative, float32 to the policy."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import minireft
import minireft.torch as mt

RTOL64 = 1e-12


def rel_err(got, expected) -> float:
    """max|got − expected| / max(max|expected|, 1): relative to the scale of the expected value."""
    got = mt.to_numpy(got)
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1.0))


def case(kind, d, r, shape, seed):
    rng = np.random.default_rng(seed)
    spec = getattr(minireft, kind)
    params = spec.init(d, r, rng, kind="paper", dtype=np.float64)
    h = rng.standard_normal((*shape, d))
    dout = rng.standard_normal(h.shape)
    return spec, getattr(mt, kind), params, h, dout


SHAPES = [(1, 1, ()), (7, 2, (5,)), (64, 8, (2, 3)), (576, 4, (3,)), (8, 8, (4,))]


@pytest.mark.parametrize("kind", ["loreft", "direft"])
@pytest.mark.parametrize("d, r, shape", SHAPES)
def test_forward_and_vjp_match_spec_float64(kind, d, r, shape):
    spec, mirror, params, h, dout = case(kind, d, r, shape, seed=d * 10 + r)
    tparams = {k: torch.from_numpy(v) for k, v in params.items()}
    th, tdout = torch.from_numpy(h), torch.from_numpy(dout)
    err = rel_err(mirror.forward(th, **tparams), spec.forward(h, **params))
    assert err <= RTOL64, f"{kind} forward d={d} r={r}: rel err {err:.2e} > {RTOL64}"
    for name, got, want in zip(("dh",) + spec.PARAMS, mirror.vjp(th, **tparams, dout=tdout),
                               spec.vjp(h, **params, dout=dout)):
        err = rel_err(got, want)
        assert err <= RTOL64, f"{kind} vjp {name} d={d} r={r}: rel err {err:.2e} > {RTOL64}"


@pytest.mark.parametrize("kind", ["loreft", "direft"])
def test_analytic_backward_matches_autograd(kind):
    """The autograd.Function's backward (the spec's VJP) equals autograd through the plain forward."""
    _, mirror, params, h, dout = case(kind, 16, 4, (3, 5), seed=1)
    leaves = [torch.from_numpy(h).requires_grad_()] + [
        torch.from_numpy(params[k]).requires_grad_() for k in mirror.PARAMS]
    mirror.apply(*leaves).backward(torch.from_numpy(dout))
    analytic = [x.grad.clone() for x in leaves]
    for x in leaves:
        x.grad = None
    mirror.forward(*leaves).backward(torch.from_numpy(dout))
    for name, a, x in zip(("h",) + mirror.PARAMS, analytic, leaves):
        err = rel_err(a, x.grad.numpy())
        assert err <= RTOL64, f"{kind} d{name}: analytic vs autograd rel err {err:.2e}"


def test_gradcheck_float64():
    _, _, params, h, _ = case("loreft", 6, 2, (2,), seed=3)
    args = [torch.from_numpy(h).requires_grad_()] + [
        torch.from_numpy(params[k]).requires_grad_() for k in ("R", "W", "b")]
    assert torch.autograd.gradcheck(mt.loreft.apply, args)
    _, _, dparams, dh, _ = case("direft", 6, 2, (2,), seed=3)
    args = [torch.from_numpy(dh).requires_grad_()] + [
        torch.from_numpy(dparams[k]).requires_grad_() for k in ("W1", "W2", "b")]
    assert torch.autograd.gradcheck(mt.direft.apply, args)


@pytest.mark.parametrize("fn", ["project_tangent", "retract_polar", "retract_qr"])
@pytest.mark.parametrize("r, d", [(1, 1), (3, 7), (8, 64), (4, 576), (5, 5)])
def test_stiefel_matches_spec_float64(fn, r, d):
    rng = np.random.default_rng(r * 1000 + d)
    R = minireft.stiefel.random_stiefel(r, d, rng)
    G = 0.3 * rng.standard_normal((r, d))
    want = getattr(minireft.stiefel, fn)(R, G)
    got = getattr(mt.stiefel, fn)(torch.from_numpy(R), torch.from_numpy(G))
    err = rel_err(got, want)
    assert err <= RTOL64, f"{fn} r={r} d={d}: rel err {err:.2e}"
    assert mt.stiefel.orthonormality_error(torch.from_numpy(R)) == pytest.approx(
        minireft.stiefel.orthonormality_error(R), abs=1e-15)


def test_random_stiefel_on_manifold():
    R = mt.stiefel.random_stiefel(8, 64, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert mt.stiefel.orthonormality_error(R) <= 1e-12


@pytest.mark.parametrize("retraction", ["polar", "qr"])
def test_optimizer_functions_match_spec_over_100_steps(retraction):
    rng = np.random.default_rng(7)
    R = minireft.stiefel.random_stiefel(4, 32, rng)
    W = rng.standard_normal((4, 32))
    tR, tW = torch.from_numpy(R), torch.from_numpy(W)
    sR = sW = tsR = tsW = None
    for _ in range(100):
        gR, gW = rng.standard_normal(R.shape), rng.standard_normal(W.shape)
        R, sR = minireft.optim.riemannian_adam_step(R, gR, sR, lr=0.05, retraction=retraction)
        W, sW = minireft.optim.adamw_step(W, gW, sW, lr=0.05, weight_decay=0.1)
        tR, tsR = mt.optim.riemannian_adam_step(tR, torch.from_numpy(gR), tsR, lr=0.05, retraction=retraction)
        tW, tsW = mt.optim.adamw_step(tW, torch.from_numpy(gW), tsW, lr=0.05, weight_decay=0.1)
    # 100 steps compound rounding; 1e-12 still bounds it with margin in float64.
    assert rel_err(tR, R) <= RTOL64 and rel_err(tW, W) <= RTOL64
    assert rel_err(tsR["exp_avg"], sR["exp_avg"]) <= RTOL64
    assert mt.stiefel.orthonormality_error(tR) <= 1e-12


def test_reft_optimizer_matches_spec_and_torch_adamw():
    """ReftOptimizer = spec step for R (Stiefel group) and for W, b (AdamW, as torch.optim.AdamW)."""
    rng = np.random.default_rng(11)
    spec = minireft.loreft.init(24, 3, rng, dtype=np.float64)
    module = torch.nn.Module()
    for k, v in spec.items():
        module.register_parameter(k, torch.nn.Parameter(torch.from_numpy(v.copy())))
    ref_W = torch.nn.Parameter(torch.from_numpy(spec["W"].copy()))
    opt = mt.ReftOptimizer.for_named_parameters(module.named_parameters(), lr=0.01, weight_decay=0.05)
    ref = torch.optim.AdamW([ref_W], lr=0.01, weight_decay=0.05)
    states = {k: None for k in spec}
    for _ in range(100):
        grads = {k: rng.standard_normal(v.shape) for k, v in spec.items()}
        for k, p in module.named_parameters():
            p.grad = torch.from_numpy(grads[k])
        ref_W.grad = torch.from_numpy(grads["W"])
        opt.step()
        ref.step()
        spec["R"], states["R"] = minireft.optim.riemannian_adam_step(spec["R"], grads["R"], states["R"], lr=0.01)
        for k in ("W", "b"):
            spec[k], states[k] = minireft.optim.adamw_step(spec[k], grads[k], states[k], lr=0.01, weight_decay=0.05)
    for k, p in module.named_parameters():
        assert rel_err(p, spec[k]) <= RTOL64, f"{k} disagrees with the spec after 100 steps"
    assert rel_err(module.W, ref_W.detach().numpy()) <= RTOL64, "W disagrees with torch.optim.AdamW"
    assert mt.stiefel.orthonormality_error(module.R.detach()) <= 1e-12


def test_weight_decay_cannot_reach_R():
    R = torch.nn.Parameter(mt.stiefel.random_stiefel(2, 8, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="weight_decay=0"):
        mt.ReftOptimizer([{"params": [R], "manifold": "stiefel", "weight_decay": 0.1}])
    # for_named_parameters puts R in the Stiefel group without decay whatever weight_decay says.
    opt = mt.ReftOptimizer.for_named_parameters([("x.R", R)], lr=1.0, weight_decay=10.0)
    for _ in range(20):
        R.grad = torch.randn(2, 8)
        opt.step()
    assert mt.stiefel.orthonormality_error(R.detach()) <= 1e-5


def test_intervention_casts_to_its_dtype_and_back():
    module = mt.Intervention("loreft", 32, 4, init="paper", generator=torch.Generator().manual_seed(0))
    h = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    out = module(h)
    assert out.dtype == torch.bfloat16 and module.R.dtype == torch.float32
    expected = mt.loreft.forward(h.float(), module.R, module.W, module.b).to(torch.bfloat16)
    assert torch.equal(out, expected)
    identity = mt.Intervention("loreft", 32, 4, init="identity")
    x = torch.randn(3, 32)
    assert (identity(x) - x).abs().max() <= 1e-6


def test_torch_init_identity_and_shapes():
    for kind in ("loreft", "direft"):
        mod = getattr(mt, kind)
        p = mod.init(16, 4, torch.Generator().manual_seed(0), kind="identity", dtype=torch.float64)
        h = torch.randn(5, 16, dtype=torch.float64)
        assert (mod.forward(h, **p) - h).abs().max() <= 1e-14, kind
        with pytest.raises(ValueError, match="rank"):
            mod.init(4, 8)


def test_bad_input_errors_name_the_argument():
    R = mt.stiefel.random_stiefel(2, 8, dtype=torch.float64)
    W, b = torch.zeros(2, 8, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"h must have shape \(\.\.\., 8\)"):
        mt.loreft.forward(torch.zeros(3, 7, dtype=torch.float64), R, W, b)
    with pytest.raises(TypeError, match="share one dtype"):
        mt.loreft.forward(torch.zeros(3, 8), R, W, b)
    with pytest.raises(ValueError, match="rank r=8 greater than hidden size d=2"):
        mt.loreft.forward(torch.zeros(2, dtype=torch.float64), R.T.contiguous(), W.T, torch.zeros(8, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mt.loreft.forward(np.zeros((3, 8)), R, W, b)


def test_reft_optimizer_steps_a_stack_of_R_as_each_R_alone():
    """Six R of two shapes, stepped as stacks by ReftOptimizer, equal six functional steps, the
    transported first moment included, to rounding: a batched matmul sums in another order than
    a 2-D one (1e-12 relative in float64, 1e-5 in float32, the mirror's policy)."""
    gen = torch.Generator().manual_seed(5)
    for dtype in (torch.float64, torch.float32):
        Rs = [torch.nn.Parameter(mt.stiefel.random_stiefel(r, 12, gen, dtype=dtype)) for r in (2, 2, 3, 2, 3, 3)]
        alone = [p.detach().clone() for p in Rs]
        states = [None] * len(Rs)
        opt = mt.ReftOptimizer([{"params": Rs, "manifold": "stiefel", "weight_decay": 0.0}], lr=0.05)
        for _ in range(3):
            grads = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in Rs]
            for p, g in zip(Rs, grads):
                p.grad = g
            opt.step()
            for k, g in enumerate(grads):
                alone[k], states[k] = mt.optim.riemannian_adam_step(alone[k], g, states[k], lr=0.05)
        tol = RTOL64 if dtype == torch.float64 else 1e-5
        for k, p in enumerate(Rs):
            err = rel_err(p, alone[k].numpy())
            assert err <= tol, f"R {k} ({dtype}) differs from its own step: rel err {err:.1e} > {tol}"
            err = rel_err(opt.state[p]["exp_avg"], states[k]["exp_avg"].numpy())
            assert err <= tol, f"m of R {k} ({dtype}) differs: rel err {err:.1e} > {tol}"


def test_reft_optimizer_step_interrupted_while_computing_changes_nothing(monkeypatch):
    """The step computes every new value before writing any: an interrupt (Ctrl-C) raised
    while it computes leaves every parameter and its state as before."""
    gen = torch.Generator().manual_seed(6)
    R = torch.nn.Parameter(mt.stiefel.random_stiefel(2, 8, gen))
    W = torch.nn.Parameter(torch.randn(2, 8, generator=gen))
    opt = mt.ReftOptimizer.for_named_parameters([("x.R", R), ("x.W", W)], lr=0.1)
    for p in (R, W):
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    before = [R.detach().clone(), W.detach().clone()]
    state_before = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
                    for p in (R, W)}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mt.optim, "adamw_step", interrupted)  # W's update comes after R's
    with pytest.raises(KeyboardInterrupt):
        opt.step()
    assert torch.equal(R.detach(), before[0]) and torch.equal(W.detach(), before[1])
    for p in (R, W):
        for k, v in state_before[id(p)].items():
            assert (torch.equal(opt.state[p][k], v) if torch.is_tensor(v) else opt.state[p][k] == v), k
