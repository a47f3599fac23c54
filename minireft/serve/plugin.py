"""The `vllm.general_plugins` entry point.

vLLM calls `register` in every process it starts. It changes nothing unless
MINIREFT_SERVE_ADAPTERS is set (by `minireft serve` or the offline entry), so installing
minireft leaves plain vLLM runs alone.
"""

from __future__ import annotations

from minireft.serve.adapters import ARCHITECTURES, from_env


def register() -> None:
    """Swap the supported architectures for minireft's hooked subclasses (ModelRegistry)."""
    if from_env() is None:
        return
    from vllm import ModelRegistry

    for arch in ARCHITECTURES:
        ModelRegistry.register_model(arch, f"minireft.serve.model:{arch}")
