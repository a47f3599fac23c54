"""Your own examples as JSONL: one {"prompt": str, "completion": str, ...} object a line.

Pure Python (no torch): the CLI reads and checks a data file before it loads a model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ("prompt", "completion")
               ) -> list[dict]:
    """Read a JSONL file of {"prompt": str, "completion": str, ...} objects, one a line.

    Blank lines are skipped; other keys are kept. Errors name the file and line number:
    ValueError for invalid JSON or a missing key, TypeError for a line that is not an
    object or a required value that is not a string; ValueError for a file with no examples.
    """
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise TypeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in required if k not in obj]
            if missing:
                raise ValueError(f"{where}: missing key(s) {missing}; the line has {sorted(obj)}")
            for k in required:
                if not isinstance(obj[k], str):
                    raise TypeError(f"{where}: {k!r} must be a string, got "
                                     f"{type(obj[k]).__name__}")
            rows.append(obj)
    if not rows:
        raise ValueError(f"{path}: no examples (the file is empty)")
    return rows


def line_numbers(path: str | os.PathLike) -> list[int]:
    """The 1-based line number of each row `read_jsonl(path)` returns (blank lines are skipped
    there), so that a later check of row i can name the file's line."""
    with open(path, encoding="utf-8-sig") as f:
        return [lineno for lineno, line in enumerate(f, 1) if line.strip()]


def write_jsonl(path: str | os.PathLike, rows) -> None:
    """Write dicts as JSONL, one a line (UTF-8, non-ASCII kept as is); `read_jsonl` reads it back."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
