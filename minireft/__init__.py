"""minireft: Representation Finetuning (ReFT), as an executable NumPy spec.

    LoReFT   Φ(h) = h + Rᵀ(W h + b − R h),  R ∈ ℝ^{r×d}, R Rᵀ = I_r
    DiReFT   Φ(h) = h + W2ᵀ(W1 h + b)

`import minireft` needs NumPy and safetensors only and never imports torch; the
PyTorch mirror lives in `minireft.torch`.
"""

__version__ = "0.1.0"
SPEC_VERSION = "1.0"

from minireft import direft, io, loreft, optim, positions, stiefel
from minireft.config import ReftConfig

__all__ = [
    "SPEC_VERSION",
    "ReftConfig",
    "__version__",
    "direft",
    "io",
    "loreft",
    "optim",
    "positions",
    "stiefel",
]
