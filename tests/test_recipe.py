"""minireft.hf.recipe: the training defaults' one home, torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minireft.hf.recipe import LAYER_FRACTIONS, default_layers


def test_recipe_imports_without_torch():
    code = "import sys; import minireft.hf.recipe, minireft.hf.prompt_format; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("n", [1, 2, 3, 12, 24, 30, 32, 80])
def test_default_layers_follow_the_depth(n):
    layers = default_layers(n)
    assert layers == tuple(sorted(set(layers))) and all(0 <= x < n for x in layers)
    assert layers == tuple(sorted({min(n - 1, round(f * n)) for f in LAYER_FRACTIONS}))


def test_default_layers_of_a_30_block_model():
    """The fractions are stated as blocks of SmolLM2's 30: they give back those blocks."""
    assert default_layers(30) == tuple(sorted(round(f * 30) for f in LAYER_FRACTIONS))
    assert all(abs(f * 30 - round(f * 30)) < 1e-9 for f in LAYER_FRACTIONS)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_default_layers_refuse_a_bad_depth(bad):
    with pytest.raises(ValueError, match="num_layers must be an int >= 1"):
        default_layers(bad)
