"""`minireft train` and `minireft generate` on tiny local model folders (nothing downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import PAIRS, _toy_classification, tiny_bert, tiny_llama, tiny_tokenizer

from minireft.cli import main
from minireft.io import load_adapter


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_classification_cli(bert_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", _toy_classification(64, 0))
    held_out = write_jsonl(tmp_path / "eval.jsonl", _toy_classification(32, 1))
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


def test_interrupt_exits_130_and_keeps_the_checkpoint(llama_dir, tmp_path, capsys, monkeypatch):
    from minireft.hf import training

    real_train = training.train

    def interrupted(model, *args, **kwargs):
        kwargs["max_steps"] = 1
        real_train(model, *args, **kwargs)  # one step completes and is saved
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    data = write_jsonl(tmp_path / "train.jsonl", PAIRS)
    out = tmp_path / "adapter"
    rc = main(["train", "--model", llama_dir, "--data", data, "--output", str(out), "--layers", "1",
               "--quiet"])
    assert rc == 130 and "last completed step" in capsys.readouterr().err
    load_adapter(out)


def test_check_stays_torch_free():
    code = "import sys, minireft.cli; minireft.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
