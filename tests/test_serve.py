"""minireft serve: start-up checks and request routing (no vLLM needed), and the exactness
run on a tiny random Llama under vLLM (slow; skipped where vLLM is not installed, as in the
main environment: scripts/setup_serve.sh makes .venv-serve, where it runs)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minireft import ReftConfig, loreft
from minireft.io import save_adapter
from minireft.serve import adapters as served
from minireft.serve.adapters import ENV, EXTRA_ARG
from minireft.serve.api import ReftMiddleware, salt
from minireft.serve.server import check, port_free, vllm_argv
from minireft.serve.settings import bind_all_cores

ROOT = Path(__file__).resolve().parent.parent


def adapter(path, d=8, layers=(1,)):
    config = ReftConfig(layers=layers, rank=2, positions="f1+l1")
    rng = np.random.default_rng(0)
    params = {f"{layer}.{g}.{p}": v for layer in layers for g in config.groups
              for p, v in loreft.init(d, 2, rng).items()}
    save_adapter(path, config, params)
    return path


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_hidden_layers": 3}))
    return folder


def test_check_accepts_adapters_and_names_the_base(model_dir, tmp_path):
    a = adapter(tmp_path / "a")
    base, pairs = check(model_dir, [f"sst={a}", f"qa={a}"])
    assert base == "base" and pairs == [("sst", str(a)), ("qa", str(a))]
    argv = vllm_argv(model_dir, base, pairs, "127.0.0.1", 8123)
    assert argv[argv.index("--served-model-name") + 1:][:3] == ["base", "sst", "qa"]
    assert "--enable-prefix-caching" in argv and "--enforce-eager" in argv


@pytest.mark.parametrize("make, specs, message", [
    (lambda t: adapter(t / "a", d=16), lambda a: [f"x={a}"], r"reft_model.safetensors\) was trained for hidden size 16, but the model has 8"),
    (lambda t: adapter(t / "a", layers=(5,)), lambda a: [f"x={a}"], r"edits layers \[5\], but the model has 3"),
    (lambda t: t / "missing", lambda a: [f"x={a}"], r"adapter 'x': no adapter folder at .*missing"),
    (lambda t: adapter(t / "a"), lambda a: [f"x={a}", f"x={a}"], r"two adapters are named 'x'"),
    (lambda t: adapter(t / "a"), lambda a: [str(a)], r"expected NAME=DIR"),
    (lambda t: adapter(t / "a"), lambda a: [f"base={a}"], r"'base' is the base model's own name"),
])
def test_check_refuses_bad_adapters_naming_the_file(model_dir, tmp_path, make, specs, message):
    with pytest.raises((ValueError, OSError), match=message):
        check(model_dir, specs(make(tmp_path)))


def test_check_names_a_broken_weights_file(model_dir, tmp_path):
    a = adapter(tmp_path / "a")
    (a / "reft_model.safetensors").write_bytes(b"\0" * 7)
    with pytest.raises(ValueError, match=r"adapter 'x': .*reft_model.safetensors cannot be read"):
        check(model_dir, [f"x={a}"])


def test_check_refuses_an_architecture_it_cannot_hook(model_dir, tmp_path):
    (model_dir / "config.json").write_text(json.dumps(
        {"architectures": ["GPT2LMHeadModel"], "hidden_size": 8, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel is not one minireft serves"):
        check(model_dir, [f"x={adapter(tmp_path / 'a')}"])


def test_a_port_in_use_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            port_free("127.0.0.1", port)


def test_cli_serve_refuses_before_starting_vllm(model_dir, tmp_path, capsys):
    from minireft import cli

    a = adapter(tmp_path / "a", d=16)
    assert cli.main(["serve", "--model", str(model_dir), "--adapter", f"x={a}"]) == 2
    assert "minireft serve" in capsys.readouterr().err


def call(body: dict, path="/v1/completions"):
    """Run ReftMiddleware on one POST; return the body (and length header) the app received."""
    seen = {}

    async def app(scope, receive, send):
        message = await receive()
        seen["body"] = json.loads(message["body"])
        seen["length"] = dict(scope["headers"]).get(b"content-length")

    async def receive():
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"1")]}
    asyncio.run(ReftMiddleware(app)(scope, receive, None))
    return seen


def test_middleware_routes_adapter_requests_and_salts_their_cache(monkeypatch):
    monkeypatch.setenv(ENV, json.dumps([["sst", "/a"], ["qa", "/b"]]))
    got = call({"model": "sst", "prompt": "hi", "vllm_xargs": {"k": 1}})
    assert got["body"]["vllm_xargs"] == {"k": 1, EXTRA_ARG: "sst"}
    assert got["body"]["cache_salt"].startswith(salt("sst", ""))
    assert int(got["length"]) == len(json.dumps(got["body"]).encode())
    other = call({"model": "qa", "prompt": "hi"})["body"]["cache_salt"]
    longer = call({"model": "sst", "prompt": "hi there"})["body"]["cache_salt"]
    assert len({got["body"]["cache_salt"], other, longer}) == 3  # by adapter and by prompt
    for body in ({"model": "base", "prompt": "hi"}, {"model": "nope", "prompt": "hi"}):
        assert call(body)["body"] == body  # the bare model and unknown names: vLLM's own answer
    chat = call({"model": "qa", "messages": [{"role": "user", "content": "x"}]}, "/v1/chat/completions")
    assert chat["body"]["vllm_xargs"] == {EXTRA_ARG: "qa"}


def test_adapters_round_trip_through_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, served.to_env([("a", tmp_path)]))
    assert served.from_env() == [("a", str(tmp_path.resolve()))]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vLLM is not installed here (scripts/setup_serve.sh installs it in .venv-serve)")
def test_vllm_generates_what_minireft_generates_on_a_tiny_llama(tmp_path):
    """scripts/serve_check.py --tiny: 3 adapters and the bare model, 20 prompts (1..60 tokens),
    one at a time and as one mixed batch, token for token against ReftModel.generate."""
    out, log = tmp_path / "summary.json", tmp_path / "serve_check.log"
    # Output to a file, not a pipe, and its own session: vLLM's engine processes outlive the
    # script and keep inherited pipes open, so reading a pipe to its end never returns; the
    # session's leftovers are killed once the script itself has exited.
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve_check.py"), "--tiny",
                                 str(tmp_path / "model"), "--json", str(out)], stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=900)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, log.read_text()[-6000:]
    summary = json.loads(out.read_text())
    kept = summary["prompts"] - len(summary["excluded"])
    assert kept >= 15, summary
    assert all(v == f"{kept}/{kept}" for v in summary["matches"].values()), summary
    assert len(summary["matches"]) == 8  # alone and mixed, 3 adapters and the bare model


def test_a_two_core_machine_gives_vllm_s_model_both_cores_unless_told_otherwise():
    env: dict = {}
    bind_all_cores(env, cpus={1, 0})
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "0,1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    big: dict = {}
    bind_all_cores(big, cpus=range(16))  # vLLM's own default: a core for its scheduler
    assert big == {}
    mine = {"VLLM_CPU_OMP_THREADS_BIND": "1"}
    bind_all_cores(mine, cpus={0, 1})
    assert mine == {"VLLM_CPU_OMP_THREADS_BIND": "1"}


def test_the_cache_salt_is_one_vllm_accepts():
    """vLLM refuses a salt over 128 characters or holding '@', '/', '\\' or NUL (HTTP 400)."""
    name = served.parse_specs(["a" * 64 + "=x"])[0][0]
    for key in (12345, "f" * 32):
        s = salt(name, key)
        assert len(s) <= 128 and not set(s) & {"@", "/", "\\", "\0"}, s
    with pytest.raises(ValueError, match="at most 64"):
        served.parse_specs(["a" * 65 + "=x"])
