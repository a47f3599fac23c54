"""`minireft train` and `minireft generate` on tiny local model folders (nothing downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import PAIRS, toy_classification, tiny_bert, tiny_llama, tiny_tokenizer

from minireft.cli import main
from minireft.hf.training import train as real_train
from minireft.io import load_adapter

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny random Llama and its character tokenizer (with a chat template), saved as a folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert().save_pretrained(folder)
    tiny_tokenizer(cls_sep=True).save_pretrained(folder)
    return str(folder)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


TRAIN_ARGS = ["--layers", "0,1", "--rank", "4", "--positions", "f2+l2", "--epochs", "30",
              "--batch-size", "4", "--lr", "5e-2", "--quiet"]


def test_train_then_generate_round_trip(llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    held_out = write_jsonl(tmp_path / "eval.jsonl", PAIRS[:2])
    out = tmp_path / "adapter"
    rc = main(["train", "--model", llama_dir, "--data", data, "--eval", held_out, "--output", str(out),
               *TRAIN_ARGS])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "trained" in captured.out and f"adapter saved to {out}" in captured.out, captured.out
    config, _params = load_adapter(out)
    assert config.layers == (0, 1) and config.rank == 4 and config.positions == "f2+l2"
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 30 and len(log["losses"]) == 30 and len(log["evals"]) == 30
    assert log["losses"][-1] < 0.3 * log["losses"][0], log["losses"][::6]
    for ex in PAIRS:
        rc = main(["generate", "--model", llama_dir, "--adapter", str(out), "--prompt", ex["prompt"],
                   "--max-new-tokens", "3"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert captured.out == ex["completion"] + "\n", (ex, captured.out)


def test_chat_template_is_remembered_and_sampling_is_seeded(llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    out = tmp_path / "adapter"
    assert main(["train", "--model", llama_dir, "--data", data, "--output", str(out), "--chat-template",
                 *TRAIN_ARGS]) == 0
    assert json.loads((out / "train_log.json").read_text())["args"]["chat_template"] is True
    capsys.readouterr()
    assert main(["generate", "--model", llama_dir, "--adapter", str(out), "--prompt", "dog",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out == "w\n", "the chat template was not applied as in training"
    outs = []
    for _ in range(2):
        assert main(["generate", "--model", llama_dir, "--adapter", str(out), "--prompt", "dog",
                     "--max-new-tokens", "8", "--sample", "--temperature", "3", "--seed", "5",
                     "--no-chat-template"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1], outs


def test_prompt_format_travels_in_the_adapter(llama_dir, tmp_path, capsys):
    """generate applies the chat template from reft_config.json alone (no train_log.json), and
    an adapter written before the field existed still loads: the legacy train_log.json's
    args.chat_template, else raw prompts."""
    from minireft import io

    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    out = tmp_path / "adapter"
    assert main(["train", "--model", llama_dir, "--data", data, "--output", str(out), "--chat-template",
                 *TRAIN_ARGS]) == 0
    (out / "train_log.json").unlink()

    def generate(prompt="dog"):
        capsys.readouterr()
        rc = main(["generate", "--model", llama_dir, "--adapter", str(out), "--prompt", prompt,
                   "--max-new-tokens", "3"])
        captured = capsys.readouterr()
        assert rc == 0 and captured.err == "", captured.err
        return captured.out

    assert generate() == "w\n", "the chat template was not applied from reft_config.json"
    meta = json.loads((out / io.CONFIG_FILE).read_text())
    del meta["prompt_format"]  # as written before this field existed
    (out / io.CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    raw = generate()
    assert raw != "w\n", "raw and templated prompts agree: this test cannot tell them apart"
    (out / "train_log.json").write_text(json.dumps({"args": {"chat_template": True}}))
    assert generate() == "w\n", "the legacy train_log.json was not read"
    (out / "train_log.json").unlink()
    assert generate() == raw


def test_the_prompt_format_survives_a_pyreft_round_trip(llama_dir, tmp_path, capsys):
    """convert --to pyreft keeps the prompt format under config.json's extra key, --from pyreft
    brings it back, so the round-tripped adapter generates what the original does; a folder
    without the key records nothing (eval says so, not "the adapter's record") unless
    --chat-template/--no-chat-template gives it."""
    from minireft import io
    from minireft.pyreft import CONFIG_FILE, PROMPT_FORMAT_KEY

    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    out = tmp_path / "adapter"
    assert main(["train", "--model", llama_dir, "--data", data, "--output", str(out), "--chat-template",
                 *TRAIN_ARGS]) == 0
    want = io.read_meta(out)["prompt_format"]
    assert want["chat_template"] is True and want["chat_template_sha256"], want

    def generate(adapter):
        capsys.readouterr()
        assert main(["generate", "--model", llama_dir, "--adapter", str(adapter), "--prompt", "dog",
                     "--max-new-tokens", "3"]) == 0
        return capsys.readouterr().out

    original = generate(out)
    assert main(["convert", "--to", "pyreft", str(out), "--output", str(tmp_path / "pyreft")]) == 0
    assert "chat template on" in capsys.readouterr().out
    pyreft_config = tmp_path / "pyreft" / CONFIG_FILE
    assert json.loads(pyreft_config.read_text())[PROMPT_FORMAT_KEY] == want
    assert main(["convert", "--from", "pyreft", str(tmp_path / "pyreft"), "--positions", "f2+l2",
                 "--output", str(tmp_path / "back")]) == 0
    captured = capsys.readouterr()
    assert "chat template on" in captured.out and captured.err == "", captured
    assert io.read_meta(tmp_path / "back")["prompt_format"] == want
    assert generate(tmp_path / "back") == original

    # a folder pyreft wrote itself has no key: nothing is recorded, and every message says so
    meta = json.loads(pyreft_config.read_text())
    del meta[PROMPT_FORMAT_KEY]
    pyreft_config.write_text(json.dumps(meta))
    assert main(["convert", "--from", "pyreft", str(tmp_path / "pyreft"), "--positions", "f2+l2",
                 "--output", str(tmp_path / "bare")]) == 0
    captured = capsys.readouterr()
    assert "no prompt format recorded" in captured.out and captured.err.count("\n") == 1, captured
    assert "records no prompt format" in captured.err and "--chat-template" in captured.err, captured.err
    assert "prompt_format" not in io.read_meta(tmp_path / "bare")
    assert generate(tmp_path / "bare") != original, "raw and templated prompts agree: the test cannot tell"
    held_out = write_jsonl(tmp_path / "eval.jsonl", PAIRS[:2])
    assert main(["eval", "--model", llama_dir, "--adapter", str(tmp_path / "bare"), "--data", held_out,
                 "--no-generate", "-q"]) == 0
    out_text = capsys.readouterr().out
    assert "chat template off (the adapter records no prompt format" in out_text, out_text
    assert "the adapter's record" not in out_text
    for flag, on in (("--chat-template", True), ("--no-chat-template", False)):
        target = tmp_path / f"given{flag}"
        assert main(["convert", "--from", "pyreft", str(tmp_path / "pyreft"), "--positions", "f2+l2",
                     "--output", str(target), flag]) == 0
        assert capsys.readouterr().err == ""
        assert io.read_meta(target)["prompt_format"] == {"chat_template": on, "chat_template_sha256": None}
    assert generate(tmp_path / "given--chat-template") == original
    assert main(["convert", "--to", "pyreft", str(out), "--output", str(tmp_path / "x"), "--chat-template"]) == 2
    assert "apply to --from pyreft only" in capsys.readouterr().err


def test_a_different_chat_template_is_one_warning_line(llama_dir, tmp_path, capsys):
    import shutil

    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    out = tmp_path / "adapter"
    assert main(["train", "--model", llama_dir, "--data", data, "--output", str(out), "--chat-template",
                 *TRAIN_ARGS]) == 0
    other = tmp_path / "other-template"
    shutil.copytree(llama_dir, other)
    tokenizer_config = other / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    template_file = other / "chat_template.jinja"
    if template_file.is_file():  # where recent transformers save the template
        template_file.write_text(template_file.read_text().replace("assistant:", "bot:"))
    else:
        config["chat_template"] = config["chat_template"].replace("assistant:", "bot:")
        tokenizer_config.write_text(json.dumps(config))
    capsys.readouterr()
    rc = main(["generate", "--model", str(other), "--adapter", str(out), "--prompt", "dog",
               "--max-new-tokens", "3"])
    err = capsys.readouterr().err
    assert rc == 0 and err.count("\n") == 1, err
    assert err.startswith("minireft generate: warning: the adapter was trained with a chat template") and (
        "different chat template" in err), err


def test_classification_cli(bert_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", toy_classification(64, 0))
    held_out = write_jsonl(tmp_path / "eval.jsonl", toy_classification(32, 1))
    out = tmp_path / "clf"
    rc = main(["train", "--task", "classification", "--model", bert_dir, "--data", data, "--eval", held_out,
               "--output", str(out), "--layers", "0", "1", "--rank", "4", "--positions", "f3+l3",
               "--pooling", "mean", "--epochs", "12", "--batch-size", "16", "--lr", "2e-2", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (out / "head.safetensors").is_file() and (out / "classifier_config.json").is_file()
    accuracy = json.loads((out / "train_log.json").read_text())["evals"][-1]["accuracy"]
    assert accuracy >= 0.85, captured.out
    assert "accuracy" in captured.out
    rc = main(["generate", "--model", bert_dir, "--adapter", str(out), "--prompt", "x"])
    assert rc == 2 and "classifier" in capsys.readouterr().err


@pytest.mark.parametrize("rows, words", [
    ([{"prompt": "a"}], ["train.jsonl:1", "completion"]),
    ([{"prompt": "", "completion": "b"}], ["example 0", "empty prompt"]),
])
def test_bad_data_is_a_usage_error(llama_dir, tmp_path, capsys, rows, words):
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    rc = main(["train", "--model", llama_dir, "--data", data, "--output", str(tmp_path / "a"),
               "--layers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and all(w in err for w in words), err
    assert not (tmp_path / "a").exists()


def test_refuses_a_non_adapter_output_before_training(llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    rc = main(["train", "--model", llama_dir, "--data", data, "--output", str(tmp_path / "busy"), "--quiet"])
    assert rc == 2 and "not an adapter folder" in capsys.readouterr().err
    assert main(["train", "--model", llama_dir, "--data", str(tmp_path / "missing.jsonl"),
                 "--output", str(tmp_path / "b"), "--quiet"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def folder_bytes(path) -> dict:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def trained(llama_dir, tmp_path):
    """An adapter folder from a good `minireft train` run, and its bytes."""
    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    out = tmp_path / "adapter"
    assert main(["train", "--model", llama_dir, "--data", data, "--output", str(out), "--layers", "1",
                 "--max-steps", "2", "--quiet"]) == 0
    return out, folder_bytes(out), data


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT at its default, as in a terminal. A test run started in
    the background (`pytest ... &` in a script) ignores SIGINT, the child would inherit that,
    and Ctrl-C would not reach it (the test would wait for its watchdog). Only a signal
    disposition changes between fork and exec: safe with the watchdog thread around."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_keeps_the_old_adapter_and_the_last_step(llama_dir, trained):
    """A real Ctrl-C (SIGINT) to `python -m minireft train --overwrite` after its first step:
    exit 130, the old adapter byte-identical, the last completed step in one partial folder
    whose path is printed on one line."""
    import os
    import signal
    import threading
    from pathlib import Path

    out, before, data = trained
    cmd = [sys.executable, "-m", "minireft", "train", "--model", llama_dir, "--data", data, "--output",
           str(out), "--overwrite", "--layers", "1", "--epochs", "100000", "--batch-size", "1",
           "--log-every", "1", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root,
                            preexec_fn=_sigint_as_in_a_terminal)  # noqa: PLW1509
    watchdog = threading.Timer(600, proc.kill)  # a hung child fails the test instead of hanging it
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:  # wait until a step has completed
            seen.append(line)
            if line.startswith("step 1/"):
                break
        assert seen and seen[-1].startswith("step 1/"), "".join(seen)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=300)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 130, rest
    assert folder_bytes(out) == before, "Ctrl-C changed the previous adapter"
    (partial,) = out.parent.glob("adapter.partial-*")
    assert not list(out.parent.glob("adapter.tmp-*")), "the staging folder was left behind"
    lines = [line for line in rest.splitlines() if not line.startswith("step ")]
    assert len(lines) == 1 and lines[0].startswith("minireft train: KeyboardInterrupt"), rest
    assert f"its adapter is in {partial};" in lines[0] and f"{out} is untouched" in lines[0], lines[0]
    assert "Traceback" not in rest
    log = json.loads((partial / "train_log.json").read_text())
    assert log["stopped"]["step"] >= 1 and len(log["losses"]) == log["stopped"]["step"]
    load_adapter(partial)


def test_non_finite_loss_exits_1_and_keeps_the_old_adapter(llama_dir, trained, capsys):
    out, before, data = trained
    # (edits at both blocks: one huge edit alone is tamed by the RMSNorm after it, two are not)
    rc = main(["train", "--model", llama_dir, "--data", data, "--output", str(out), "--overwrite", "--layers",
               "0,1", "--lr", "1e30", "--epochs", "5", "--batch-size", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert folder_bytes(out) == before
    (partial,) = out.parent.glob("adapter.partial-*")
    assert len(err.splitlines()) == 1 and "FloatingPointError" in err and str(partial) in err, err
    load_adapter(partial)  # the last good step loads


def _no_weights(monkeypatch):
    """Make loading the base model fail the test: what follows must be refused before it."""
    from minireft import cli

    monkeypatch.setattr(cli, "_load_base", lambda *a, **k: pytest.fail("the model's weights were loaded"))


def test_an_adapter_in_output_is_refused_before_the_model_loads(llama_dir, trained, capsys, monkeypatch):
    out, before, data = trained
    _no_weights(monkeypatch)
    rc = main(["train", "--model", llama_dir, "--data", data, "--output", str(out), "--layers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "already holds an adapter" in err and "--overwrite" in err, err
    assert folder_bytes(out) == before


@pytest.mark.parametrize("flags, words", [
    (["--rank", "64"], ["rank 64", "hidden size 32"]),
    (["--rank", "0"], ["rank must be an int >= 1"]),
    (["--layers", "1,5"], ["[5] out of range", "2 blocks, 0..1"]),
    (["--positions", "x3"], ["positions"]),
])
def test_bad_intervention_flags_are_refused_before_the_model_loads(llama_dir, tmp_path, capsys, monkeypatch,
                                                                    flags, words):
    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    _no_weights(monkeypatch)
    args = ["train", "--model", llama_dir, "--data", data, "--output", str(tmp_path / "a")]
    rc = main(args + (["--layers", "1"] if "--layers" not in flags else []) + flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and all(w in err for w in words), err
    assert not (tmp_path / "a").exists()


def test_a_missing_adapter_is_refused_before_the_model_loads(llama_dir, tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    rc = main(["generate", "--model", llama_dir, "--adapter", str(tmp_path / "nope"), "--prompt", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"no adapter folder at {tmp_path / 'nope'}" in err, err


def test_generate_refuses_an_empty_prompt_before_the_model_loads(llama_dir, trained, capsys, monkeypatch):
    """An empty prompt used to reach the model as zero tokens (IndexError in argmax); now it is
    refused like train's, with or without the chat template, before any weights load."""
    out = trained[0]
    _no_weights(monkeypatch)
    for prompt in ("", " \n "):
        for flags in ([], ["--no-chat-template"], ["--chat-template"]):
            rc = main(["generate", "--model", llama_dir, "--adapter", str(out), "--prompt", prompt, *flags])
            err = capsys.readouterr().err
            assert rc == 2 and err.count("\n") == 1 and "--prompt is empty" in err, (prompt, flags, err)
    for flags in (["--max-new-tokens", "0"], ["--sample", "--temperature", "0"]):
        rc = main(["generate", "--model", llama_dir, "--adapter", str(out), "--prompt", "cat", *flags])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and flags[-2] in err, (flags, err)


def test_generate_text_refuses_an_empty_prompt():
    from minireft import ReftConfig
    from minireft.hf.generation import generate_text
    from minireft.hf.model import attach

    reft = attach(tiny_llama(), ReftConfig(layers=[0], rank=2, positions="f1+l1"))
    tokenizer = tiny_tokenizer()
    assert isinstance(generate_text(reft, tokenizer, "cat", max_new_tokens=2), str)
    for prompt in ("", "   "):
        with pytest.raises(ValueError, match="prompt is empty"):
            generate_text(reft, tokenizer, prompt, chat_template=False, max_new_tokens=2)


def test_the_jsonl_error_names_the_columns(llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [{"input": "cat", "output": "m"}])
    rc = main(["train", "--model", llama_dir, "--data", data, "--output", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    for word in ("train.jsonl:1", "'prompt'", "'completion'", "'input'", "'output'"):
        assert word in err, (word, err)


def test_ctrl_c_during_generate_exits_130(llama_dir, trained, capsys, monkeypatch):
    from minireft.hf import generation

    out, _, _ = trained

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generation, "generate_text", interrupted)
    rc = main(["generate", "--model", llama_dir, "--adapter", str(out), "--prompt", "cat"])
    assert rc == 130 and capsys.readouterr().err == "minireft generate: interrupted\n"


def test_no_tuning_flags_pass_the_library_defaults(llama_dir, tmp_path, monkeypatch):
    """`minireft train` without tuning flags calls train() with train()'s own defaults and
    attaches ReftConfig's defaults at the recipe's layers for the model's depth."""
    import inspect

    from minireft import ReftConfig
    from minireft.hf import training
    from minireft.hf.recipe import default_layers

    seen = {}

    def spy(model, tokenizer, examples, **kwargs):
        seen.update(kwargs, config=model.config)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", spy)
    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    assert main(["train", "--model", llama_dir, "--data", data, "--output", str(tmp_path / "a")]) == 130
    defaults = inspect.signature(real_train).parameters
    for name in ("epochs", "min_steps", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_ratio",
                 "seed", "max_steps", "chat_template"):
        assert seen[name] == defaults[name].default, name
    assert seen["config"] == ReftConfig(layers=default_layers(2))


def test_check_stays_torch_free():
    code = "import sys, minireft.cli; minireft.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
