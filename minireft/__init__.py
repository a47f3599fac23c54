"""minireft: Representation Finetuning (ReFT), as an executable NumPy spec.

    LoReFT   Φ(h) = h + Rᵀ(W h + b − R h),  R ∈ ℝ^{r×d}, R Rᵀ = I_r
    DiReFT   Φ(h) = h + W2ᵀ(W1 h + b)
    NoReFT   Φ(h) = h + W2ᵀ(W1 h + b − W2 h)
    ConsReFT Φ(h) = h + Rᵀ(b − R h),        R Rᵀ = I_r
    LobiReFT Φ(h) = h + Rᵀ b,               R Rᵀ = I_r
    orthogonal DiReFT (ortho_direft)  Φ(h) = h + Rᵀ(W h + b),  R Rᵀ = I_r
    edit     H'[b, t] = Φ_g(H[b, t]) at the edited positions of row b, H[b, t] elsewhere
    packed_edit  the same on T tokens in one flat run (an engine's batch), adapter per token

`import minireft` needs NumPy and safetensors only and never imports torch; the
PyTorch mirror lives in `minireft.torch`.
"""

from minireft import (
    consreft,
    direft,
    io,
    lobireft,
    loreft,
    noreft,
    optim,
    ortho_direft,
    positions,
    stiefel,
)
from minireft.config import ReftConfig

# minireft.edit is the function (the module stays importable as `from minireft.edit import ...`)
from minireft.edit import edit, edit_vjp, packed_edit
from minireft.version import SPEC_VERSION, __version__

__all__ = [
    "SPEC_VERSION",
    "ReftConfig",
    "__version__",
    "consreft",
    "direft",
    "edit",
    "edit_vjp",
    "io",
    "lobireft",
    "loreft",
    "noreft",
    "optim",
    "packed_edit",
    "ortho_direft",
    "positions",
    "stiefel",
]
