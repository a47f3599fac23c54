"""scripts/bench_overhead.py runs: its functions on a tiny random Llama (no timing asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from minireft.hf.data import IGNORE_INDEX
from minireft.hf.model import attach


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_overhead.py"
    spec = importlib.util.spec_from_file_location("bench_overhead", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_configurations_are_the_issues(bench):
    paper = bench.reft_config(bench.CONFIGS["paper"], 30)
    three = bench.reft_config(bench.CONFIGS["3-block"], 30)
    assert (paper.layers, paper.rank, paper.positions, paper.tied) == (tuple(range(30)), 8, "f7+l7", True)
    assert (three.layers, three.rank, three.positions, three.tied) == ((4, 12, 20), 4, "f1+l1", True)
    assert bench.CONFIGS["long"]["length"] == 512


def test_synthetic_batch_supervises_the_last_quarter(bench):
    batch = bench.synthetic_batch(50, 3, 16, seed=1)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 16)
    assert (batch["labels"][:, :12] == IGNORE_INDEX).all() and (batch["labels"][:, 12:] >= 3).all()
    assert batch["prompt_lengths"].tolist() == [12] * 3


def test_floor_and_loreft_steps_train_their_own_parameters(bench):
    model = bench.tiny_model()
    reft = attach(model, bench.reft_config(bench.CONFIGS["paper"], 4), seed=0)
    batch = bench.synthetic_batch(model.config.vocab_size, 2, 16)
    loreft = {n: p.detach().clone() for n, p in reft.named_trainable_parameters()}
    result = bench.bench_training(reft, batch, rounds=1, checkpointing_memory=True)
    after = dict(reft.named_trainable_parameters())
    assert set(after) == set(loreft), "the LoReFT modules did not come back"
    assert all(not torch.equal(after[n], loreft[n]) for n in loreft), "the LoReFT steps did not train"
    assert {k: len(v) for k, v in result["times"].items()} == {"loreft": 1, "floor": 1, "bare": 1}
    mem = result["memory"]
    assert all(mem[k] is not None and mem[k] > 0 for k in ("loreft", "floor", "loreft, checkpointing"))
    assert mem["loreft, checkpointing"] < mem["loreft"], mem
    assert not any(p.requires_grad for p in model.parameters()), "the bare step unfroze the model"


def test_quick_run_prints_every_ratio(bench, capsys):
    assert bench.main(["--quick", "--configs", "paper,long", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for words in ("[paper]", "[long]", "step LoReFT / floor", "step LoReFT / bare", "peak step memory",
                  "decode tok/s", "gradient checkpointing: peak step memory"):
        assert words in out, (words, out)
    with pytest.raises(SystemExit):
        bench.main(["--configs", "nope"])
