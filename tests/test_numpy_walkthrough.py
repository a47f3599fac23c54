"""examples/numpy_walkthrough.py: a LoReFT finetune in NumPy alone trains, and its hand-written backprop is right."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "numpy_walkthrough.py"


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("numpy_walkthrough", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["numpy_walkthrough"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("numpy_walkthrough", None)


@pytest.mark.parametrize("retraction", ["polar", "qr"])
def test_loss_falls_tenfold_and_R_stays_orthonormal(toy, retraction):
    result = toy.run(steps=300, seed=0, retraction=retraction)
    print(f"\n  numpy_walkthrough {retraction}: loss {result['initial_loss']:.3e} → {result['final_loss']:.3e} "
          f"({result['loss_ratio']:.1f}-fold), max|RRᵀ − I| {result['max_orthonormality_error']:.2e}")
    assert result["loss_ratio"] >= 10, f"loss fell only {result['loss_ratio']:.2f}-fold"
    assert result["max_orthonormality_error"] <= 1e-12
    assert len(result["losses"]) == 301 and all(np.isfinite(result["losses"]))


def test_deterministic_given_the_seed(toy):
    a = toy.run(steps=20, seed=3)
    b = toy.run(steps=20, seed=3)
    assert a["losses"] == b["losses"]
    assert all(np.array_equal(a["params"][k], b["params"][k]) for k in a["params"])


def test_identity_init_starts_at_the_base_model(toy):
    model, data, _, _, params = toy.setup(seed=1, positions="f2+l2", rank=4)
    base = toy.outputs(model, data, None, "f2+l2")
    edited = toy.outputs(model, data, params, "f2+l2")
    assert all(np.array_equal(base[n], edited[n]) for n in data)


def test_positions_follow_the_rule_on_short_prompts(toy):
    edited = toy.run(steps=0, seed=0)["edited"]
    assert edited[1] == [0]  # n = 1: the one token is the suffix
    assert edited[3] == [0, 1, 2]  # n = 3 < 2 + 2: p' = ⌊3/2⌋ = 1, s' = ⌈3/2⌉ = 2
    assert edited[13] == [0, 1, 11, 12]


def test_hand_written_backprop_matches_finite_differences(toy):
    """The gradient of the whole loss wrt R, W, b (frozen layers by hand, the edit by loreft.vjp)
    against central differences along random directions. The loss is smooth between ReLU kinks,
    so with ε = 1e-5 the difference errs by O(ε²) ≈ 1e-10 relative."""
    model, data, targets, h1s, params = toy.setup(seed=2, positions="f2+l2", rank=4)
    rng = np.random.default_rng(0)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}  # leave the identity point
    _, grads = toy.loss_and_grads(model, data, targets, h1s, params, "f2+l2")
    eps = 1e-5
    for name in ("R", "W", "b"):
        for _ in range(3):
            V = rng.standard_normal(params[name].shape)
            plus = toy.loss_and_grads(model, data, targets, h1s, params | {name: params[name] + eps * V}, "f2+l2")[0]
            minus = toy.loss_and_grads(model, data, targets, h1s, params | {name: params[name] - eps * V}, "f2+l2")[0]
            fd = (plus - minus) / (2 * eps)
            an = float(np.sum(grads[name] * V))
            assert abs(fd - an) <= 1e-6 * max(abs(fd), abs(an)), f"d{name}: analytic {an!r}, central difference {fd!r}"


def test_main_prints_the_curve_and_succeeds(toy, capsys):
    assert toy.main(["--steps", "120", "--seed", "0", "--retraction", "qr"]) == 0
    out = capsys.readouterr().out
    assert "step   100  loss" in out and "(log10 loss)" in out and "fell" in out and out.rstrip().endswith("OK")
