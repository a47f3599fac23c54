"""The adapters a server loads at start: NAME=DIR pairs, checked against the model."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minireft.config import ReftConfig
from minireft.edit import layer_params
from minireft.io import AdapterError, load_adapter

ENV = "MINIREFT_SERVE_ADAPTERS"  # [[name, dir], ...] as JSON: what each vLLM process loads
EXTRA_ARG = "minireft_adapter"  # SamplingParams.extra_args key naming a request's adapter
# The vLLM architectures whose decoder layers return (hidden_states, residual) from a list at
# model.layers, the form minireft.serve.model hooks; others are refused at start.
ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    config: ReftConfig
    params: dict  # {"{layer}.{group}.{param}": ndarray}

    def layer(self, layer: int) -> dict:
        """{group: {param: ndarray}} of one layer, the form the edit takes."""
        return layer_params(self.params, layer)


def parse_specs(specs) -> list[tuple[str, str]]:
    """["NAME=DIR", ...] → [(name, dir)]; a malformed or repeated name is refused."""
    out, seen = [], {}
    for spec in specs:
        name, sep, path = str(spec).partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter {spec!r}: expected NAME=DIR, e.g. --adapter sentiment=runs/sst")
        if not _NAME.match(name):
            raise ValueError(f"--adapter {spec!r}: the name must be at most 64 letters, digits and . _ : - "
                             f"(it is a request's \"model\" field)")
        if name in seen:
            raise ValueError(f"two adapters are named {name!r} ({seen[name]} and {path}); give each a "
                             f"distinct name")
        seen[name] = path
        out.append((name, path))
    return out


def model_shape(model_dir) -> tuple[int, int, str]:
    """(hidden size, number of blocks, architecture) from an HF folder's config.json."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} does not exist: --model must be a Hugging Face model folder")
    data = json.loads(config_file.read_text(encoding="utf-8"))
    data = data.get("text_config", data)
    arch = (data.get("architectures") or json.loads(config_file.read_text())["architectures"])[0]
    return int(data["hidden_size"]), int(data["num_hidden_layers"]), arch


def load_all(pairs, hidden_size: int, num_layers: int, base_name: str | None = None) -> list[Adapter]:
    """Load and check every (name, dir): readable, same hidden size, layers inside the model,
    a name other than the base model's. Errors name the adapter and its file."""
    adapters = []
    for name, path in pairs:
        if base_name is not None and name == base_name:
            raise ValueError(f"adapter name {name!r} is the base model's own name; choose another")
        path = Path(path)
        try:
            config, params = load_adapter(path)
        except (OSError, ValueError, AdapterError) as exc:
            raise AdapterError(f"adapter {name!r}: {exc}") from None
        d = next(v.shape[1] for k, v in params.items() if v.ndim == 2)
        if d != hidden_size:
            raise AdapterError(f"adapter {name!r} ({path / 'reft_model.safetensors'}) was trained for hidden size "
                               f"{d}, but the model has {hidden_size}: an adapter for another model")
        if max(config.layers) >= num_layers:
            raise AdapterError(f"adapter {name!r} ({path / 'reft_config.json'}) edits layers "
                               f"{list(config.layers)}, but the model has {num_layers} blocks (0..{num_layers - 1})")
        if config.component != "block_output":
            raise AdapterError(f"adapter {name!r} ({path / 'reft_config.json'}) edits {config.component!r}; "
                               f"serving supports the block output only")
        adapters.append(Adapter(name, path, config, {k: np.asarray(v) for k, v in params.items()}))
    return adapters


def to_env(pairs) -> str:
    return json.dumps([[name, str(Path(path).resolve())] for name, path in pairs])


def from_env() -> list[tuple[str, str]] | None:
    text = os.environ.get(ENV)
    return None if not text else [tuple(p) for p in json.loads(text)]
