"""minireft.hf.evaluation and `minireft eval` on a tiny random Llama (nothing downloaded).

Every expected value is computed independently here: greedy completions by an argmax loop
over full forwards of one unpadded row at a time (no KV cache, no batching), choice scores
by log_softmax of one unpadded row's logits, summed by hand.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import tiny_llama, tiny_tokenizer

from minireft import ReftConfig
from minireft.cli import main
from minireft.hf import evaluation
from minireft.hf.batching import batches_by_length
from minireft.hf.data import encode_example, encode_prompt
from minireft.hf.model import attach

PROMPTS = ["cat", "a longer prompt", "dog!", "x"]  # different lengths: batches are padded
NEW = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


def _reft(model, seed=3):
    # init "paper" draws W, b away from the identity, so the edit changes the outputs
    return attach(model, ReftConfig(layers=(0, 1), rank=2, positions="f1+l1"), seed=seed)


def _forward(model, ids: list[int], prompt_length: int) -> torch.Tensor:
    x = torch.tensor([ids])
    kwargs = {"prompt_lengths": torch.tensor([prompt_length])} if hasattr(model, "interventions") else {}
    return model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False, **kwargs).logits[0]


@torch.no_grad()
def _greedy_by_hand(model, tokenizer, prompt: str, new: int, chat: bool = False) -> str:
    ids = encode_prompt(tokenizer, prompt, chat_template=chat)
    n = len(ids)
    for _ in range(new):
        nxt = int(_forward(model, ids, n)[-1].argmax())
        if nxt == tokenizer.eos_token_id:
            break
        ids.append(nxt)
    return tokenizer.decode(ids[n:], skip_special_tokens=True)


@torch.no_grad()
def _choice_score_by_hand(model, tokenizer, prompt: str, choice: str) -> float:
    p = encode_prompt(tokenizer, prompt)
    c = list(tokenizer(choice, add_special_tokens=False)["input_ids"])
    logp = torch.log_softmax(_forward(model, p + c, len(p)).double(), dim=-1)
    return sum(float(logp[len(p) + j - 1, tok]) for j, tok in enumerate(c))


def test_normalise_strips_and_collapses_whitespace_only():
    assert evaluation.normalise("  a \t b\n\nc ") == "a b c"
    assert evaluation.normalise("A.b") != evaluation.normalise("a.b")  # case and punctuation kept


@pytest.mark.parametrize("with_adapter", [False, True])
def test_batched_greedy_equals_one_row_argmax_loop(tokenizer, with_adapter):
    model = tiny_llama()
    m = _reft(model) if with_adapter else model
    try:
        got = evaluation.generate_greedy(m, tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=3)
        want = [_greedy_by_hand(m, tokenizer, p, NEW) for p in PROMPTS]
    finally:
        if with_adapter:
            m.detach()
    assert got == want


def test_exact_match_counts_rows_whose_normalised_generation_equals_the_completion(tokenizer):
    reft = _reft(tiny_llama())
    try:
        greedy = [_greedy_by_hand(reft, tokenizer, p, NEW) for p in PROMPTS]
        assert len(set(greedy)) > 1 or greedy[0], "degenerate model: every generation is empty"
        # rows 0 and 2 get their own greedy output (row 2 with extra whitespace), rows 1 and 3 a
        # completion that differs from it: exact match is 2/4
        examples = [{"prompt": PROMPTS[0], "completion": greedy[0]},
                    {"prompt": PROMPTS[1], "completion": greedy[1] + "Z"},
                    {"prompt": PROMPTS[2], "completion": "  " + greedy[2].replace(" ", "  ") + "\n"},
                    {"prompt": PROMPTS[3], "completion": "Q" + greedy[3]}]
        result = evaluation.evaluate_generation(reft, tokenizer, examples, max_new_tokens=NEW, batch_size=2)
    finally:
        reft.detach()
    assert result["generations"] == greedy
    assert result["exact_match"] == 0.5 and result["n"] == 4


def test_batches_group_rows_by_length_longest_first():
    # lengths 3, 9, 1, 9, 5: the two 9s (ties in input order), then 5 and 3, then 1
    assert batches_by_length([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    assert batches_by_length([], 4) == []


CHOICE_ROWS = [
    {"prompt": "cat", "completion": "m", "choices": ["m", "woof", "o"]},
    {"prompt": "a longer prompt", "completion": "yes", "choices": ["no", "yes"]},
    {"prompt": "dog", "completion": "ignored", "label": 1, "choices": ["ab", "c"]},
    {"prompt": "A or B?", "completion": "B", "choices": ["A", "B", "?"]},  # one token each: one forward
]


@pytest.mark.parametrize("with_adapter", [False, True])
def test_choice_scores_equal_summed_log_softmax_by_hand(tokenizer, with_adapter):
    model = tiny_llama()
    m = _reft(model) if with_adapter else model
    try:
        got = evaluation.score_choices(m, tokenizer, CHOICE_ROWS, batch_size=4)
        want = [[_choice_score_by_hand(m, tokenizer, r["prompt"], c) for c in r["choices"]] for r in CHOICE_ROWS]
    finally:
        if with_adapter:
            m.detach()
    for g, w in zip(got["scores"], want):
        assert g == pytest.approx(w, abs=1e-4)
    predictions = [max(range(len(w)), key=w.__getitem__) for w in want]
    answers = [0, 1, 1, 1]
    assert got["predictions"] == predictions
    assert got["accuracy"] == pytest.approx(sum(p == a for p, a in zip(predictions, answers)) / 4)


@torch.no_grad()
def test_scoring_builds_logits_only_where_a_target_follows(tokenizer):
    # The lm_head makes logits only at columns whose next token is scored, and the scores are
    # those of full logits by hand; the same when the model has no logits_to_keep (a hook cuts
    # the head's input instead).
    model = tiny_llama()
    widths = []  # positions of the logits the head makes, per call
    record = lambda m, args, out: widths.append(out.shape[1])
    handle = model.lm_head.register_forward_hook(record)
    try:
        kept = evaluation.score_choices(model, tokenizer, CHOICE_ROWS, batch_size=4)["scores"]
    finally:
        handle.remove()
    lengths = [len(encode_prompt(tokenizer, r["prompt"])) + len(tokenizer(c, add_special_tokens=False)["input_ids"])
               for r in CHOICE_ROWS for c in r["choices"]]
    assert max(widths) < max(lengths)  # fewer columns than the padded batch's width
    want = [[_choice_score_by_hand(model, tokenizer, r["prompt"], c) for c in r["choices"]] for r in CHOICE_ROWS]
    for k, w in zip(kept, want):
        assert k == pytest.approx(w, abs=1e-4)
    forward = model.forward  # hide logits_to_keep: scoring falls back to a hook on the head's input
    model.forward = lambda input_ids=None, attention_mask=None, use_cache=None, **kw: forward(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)
    try:
        widths.clear()
        handle = model.lm_head.register_forward_hook(record)
        hooked = evaluation.score_choices(model, tokenizer, CHOICE_ROWS, batch_size=4)["scores"]
    finally:
        handle.remove()
        del model.forward
    assert max(widths) < max(lengths)
    for h, w in zip(hooked, want):
        assert h == pytest.approx(w, abs=1e-4)


def test_choice_rows_must_name_their_right_answer(tokenizer):
    with pytest.raises(ValueError, match="none of its choices"):
        evaluation.score_choices(tiny_llama(), tokenizer, [{"prompt": "a", "completion": "z", "choices": ["x", "y"]}])
    with pytest.raises(ValueError, match="list of >= 2"):
        evaluation.score_choices(tiny_llama(), tokenizer, [{"prompt": "a", "completion": "x", "choices": ["x"]}])


@torch.no_grad()
def test_mean_loss_is_the_token_mean_of_completion_negative_log_likelihoods(tokenizer):
    model = tiny_llama()
    rows = [{"prompt": "cat", "completion": "mew"}, {"prompt": "a longer prompt", "completion": "ok"}]
    got = evaluation.mean_loss(model, tokenizer, rows, batch_size=2)
    total, count = 0.0, 0
    for i, r in enumerate(rows):
        e = encode_example(tokenizer, r, i)
        logp = torch.log_softmax(_forward(model, e["input_ids"], e["prompt_length"]).double(), -1)
        for t in range(e["prompt_length"], len(e["input_ids"])):
            total -= float(logp[t - 1, e["input_ids"][t]])
            count += 1
    assert got["targets"] == count
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-eval")
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(llama_dir, tmp_path_factory):
    from minireft.hf.loading import load_model

    model, _ = load_model(str(llama_dir))
    reft = _reft(model)
    out = tmp_path_factory.mktemp("eval-adapter") / "adapter"
    reft.save_pretrained(out)
    reft.detach()
    return out


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_eval_reports_what_the_python_api_computes_for_adapter_and_baseline(
        llama_dir, adapter_dir, tmp_path, capsys, tokenizer):
    from minireft.hf.loading import load_model
    from minireft.hf.model import ReftModel

    rows = [{"prompt": p, "completion": "mo"} for p in PROMPTS] + CHOICE_ROWS
    data = _write(tmp_path / "eval.jsonl", rows)
    report = tmp_path / "report.json"
    rc = main(["eval", "--model", str(llama_dir), "--adapter", str(adapter_dir), "--data", data,
               "--baseline", "--no-chat-template", "--max-new-tokens", str(NEW), "--json", str(report), "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "exact match" in out and "choice accuracy" in out and "base" in out
    got = json.loads(report.read_text())

    model, tok = load_model(str(llama_dir))
    base = evaluation.evaluate(model, tok, rows, chat_template=False, max_new_tokens=NEW)
    reft = ReftModel.from_pretrained(model, adapter_dir)
    try:
        adapted = evaluation.evaluate(reft, tok, rows, chat_template=False, max_new_tokens=NEW)
    finally:
        reft.detach()
    for name, want in (("base", base), ("adapter", adapted)):
        assert got[name]["generations"] == want["generations"]
        for key in ("loss", "exact_match", "choice_accuracy"):
            assert got[name][key] == pytest.approx(want[key], rel=1e-6), (name, key)
    assert got["base"]["loss"] != pytest.approx(got["adapter"]["loss"], rel=1e-6), "the edit changed nothing"


def test_cli_eval_refuses_a_missing_adapter_and_bad_choices_before_loading(llama_dir, adapter_dir, tmp_path,
                                                                            capsys, monkeypatch):
    from minireft import cli

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(cli, "_load_base", no_load)
    data = _write(tmp_path / "ok.jsonl", [{"prompt": "a", "completion": "b"}])
    rc = main(["eval", "--model", str(llama_dir), "--adapter", str(tmp_path / "nope"), "--data", data])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "z", "choices": ["x", "y"]}])
    rc = main(["eval", "--model", str(llama_dir), "--adapter", str(adapter_dir), "--data", bad])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl:1" in err and "choices" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bad, words", [
    # the completion is among the choices, but the label (which wins) is not: score_choices refused
    # this only after loading and scoring, as "example 0"
    ({"prompt": "a", "completion": "x", "choices": ["x", "y"], "label": 2}, "label 2 is outside choices 0..1"),
    ({"prompt": "a", "completion": "x", "choices": ["x", "y"], "label": -1}, "label -1 is outside choices 0..1"),
    ({"prompt": "a", "completion": "z", "choices": ["x", "y"], "label": "1"}, "none of its choices"),
    ({"prompt": "a", "completion": "x", "choices": ["x"]}, ">= 2 non-empty strings"),
    ({"prompt": " ", "completion": "x"}, "the prompt is empty"),
])
def test_cli_eval_checks_every_row_before_loading_naming_its_line(llama_dir, adapter_dir, tmp_path, capsys,
                                                                   monkeypatch, bad, words):
    from minireft import cli

    monkeypatch.setattr(cli, "_load_base", lambda *a, **k: pytest.fail("the model was loaded first"))
    good = {"prompt": "b", "completion": "y", "choices": ["x", "y"], "label": 1}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")  # a blank line 2: bad is line 3
    rc = main(["eval", "--model", str(llama_dir), "--adapter", str(adapter_dir), "--data", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{path}:3: " in err and words in err and err.count("\n") == 1, err


def test_cli_eval_ctrl_c_exits_130(llama_dir, adapter_dir, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate", interrupted)
    data = _write(tmp_path / "ok.jsonl", [{"prompt": "a", "completion": "b"}])
    rc = main(["eval", "--model", str(llama_dir), "--adapter", str(adapter_dir), "--data", data, "-q"])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
