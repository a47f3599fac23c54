"""`import minireft` needs NumPy and safetensors only, and never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys
import minireft
from minireft import ReftConfig, direft, io, loreft, optim, positions, stiefel
assert minireft.SPEC_VERSION == "1.1", minireft.SPEC_VERSION
heavy = sorted(m for m in ("torch", "transformers", "jax", "tensorflow") if m in sys.modules)
print("heavy:", heavy)
assert not heavy, f"import minireft pulled in {heavy}"
"""


def test_import_minireft_does_not_import_torch():
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "heavy: []" in result.stdout


def test_public_names():
    import minireft

    assert minireft.SPEC_VERSION == "1.1"
    for module, names in {
        "loreft": ("forward", "vjp", "init"),
        "direft": ("forward", "vjp", "init"),
        "stiefel": ("project_tangent", "retract_polar", "retract_qr", "orthonormality_error", "random_stiefel"),
        "optim": ("adamw_step", "riemannian_adam_step"),
        "positions": ("parse_positions", "intervention_positions"),
        "io": ("save_adapter", "load_adapter"),
    }.items():
        for name in names:
            assert callable(getattr(getattr(minireft, module), name)), f"minireft.{module}.{name}"
    assert isinstance(minireft.ReftConfig, type)


def test_python_dash_m_minireft_runs_the_command():
    import minireft

    out = subprocess.run([sys.executable, "-m", "minireft", "--version"], check=False,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert minireft.__version__ in out.stdout
