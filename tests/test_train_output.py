"""train(..., output_dir=...): nothing is lost. The run is staged beside output_dir and moved in
only when it ends well; an adapter already there is refused unless overwrite=True; a run that
stops (a non-finite loss, an exception, an interrupt) leaves the old adapter byte for byte and
keeps its last completed step in a sibling partial folder. Plus train_log.json and loss.png."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import PAIRS, reft, tiny_llama, tiny_tokenizer

from minireft import io
from minireft.hf import loss, training
from minireft.hf.recipe import LOG_FILE, PLOT_FILE
from minireft.hf.training import train

QUIET = {"progress": False}
pytestmark = [pytest.mark.filterwarnings("ignore:this run takes:UserWarning"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py




def folder_bytes(path) -> dict:
    """{relative file name: bytes} of every file under `path`."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def old_adapter(tmp_path):
    """An adapter folder from an earlier good run, and its bytes."""
    out = tmp_path / "adapter"
    train(reft(tiny_llama(), seed=1), tiny_tokenizer(), PAIRS, epochs=2, batch_size=2, output_dir=out, **QUIET)
    return out, folder_bytes(out)


def siblings(out) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name and p.name.startswith(out.name))


def test_a_good_run_is_staged_then_moved_in(tmp_path, monkeypatch):
    out = tmp_path / "adapter"
    seen = []
    real_save = io.save_adapter

    def spy(path, *args, **kwargs):
        seen.append(path)
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(io, "save_adapter", spy)
    model = reft(tiny_llama())
    result = train(model, tiny_tokenizer(), PAIRS, epochs=2, batch_size=2, output_dir=out, save_every=1,
                   eval_examples=PAIRS[:2], **QUIET)
    assert len(seen) == 4 and all(p.parent == out.parent and p.name.startswith("adapter.tmp-") for p in seen)
    assert siblings(out) == [], "the staging folder was left behind"
    _, saved = io.load_adapter(out)
    for name, p in model.named_trainable_parameters():
        assert torch.equal(torch.from_numpy(saved[name]), p.detach()), name
    log = json.loads((out / LOG_FILE).read_text())
    assert log["losses"] == result.losses and len(log["losses"]) == result.steps == 4
    assert [e["step"] for e in log["evals"]] == [2, 4] and log["stopped"] is None
    assert log["settings"]["batch_size"] == 2 and log["settings"]["epochs"] == 2


def test_an_adapter_in_output_dir_is_refused_before_any_work(old_adapter, monkeypatch):
    out, before = old_adapter
    monkeypatch.setattr(training, "encode_examples", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(FileExistsError, match="already holds an adapter; replace it with --overwrite"):
        train(reft(tiny_llama()), tiny_tokenizer(), PAIRS, output_dir=out, **QUIET)
    assert folder_bytes(out) == before


def test_overwrite_replaces_the_adapter(old_adapter):
    out, before = old_adapter
    model = reft(tiny_llama(), seed=2)
    train(model, tiny_tokenizer(), PAIRS, epochs=1, batch_size=2, output_dir=out, overwrite=True, **QUIET)
    assert folder_bytes(out) != before and siblings(out) == []
    _, saved = io.load_adapter(out)
    for name, p in model.named_trainable_parameters():
        assert torch.equal(torch.from_numpy(saved[name]), p.detach()), name


def _check_stopped(out, before, exc_info, steps_done):
    """The old adapter is byte-identical; the partial folder holds step `steps_done` and its log."""
    assert folder_bytes(out) == before, "a failed run changed the previous adapter"
    partials = [name for name in siblings(out) if ".partial-" in name]
    assert len(partials) == len(siblings(out)) == (1 if steps_done else 0), siblings(out)
    note = exc_info.value.__notes__[-1]
    assert note.startswith(f"training stopped after step {steps_done} of") and f"{out} is untouched" in note
    if not steps_done:
        return None
    partial = out.parent / partials[0]
    assert f"its adapter is in {partial};" in note
    log = json.loads((partial / LOG_FILE).read_text())
    assert log["stopped"]["step"] == steps_done == len(log["losses"])
    return partial


def test_non_finite_loss_keeps_the_old_adapter(old_adapter):
    out, before = old_adapter
    model = reft(tiny_llama())
    with pytest.raises(FloatingPointError) as info:
        train(model, tiny_tokenizer(), PAIRS, epochs=5, batch_size=1, lr=1e30, output_dir=out, overwrite=True,
              **QUIET)
    steps = len(info.value.__notes__) and int(info.value.__notes__[-1].split("after step ")[1].split()[0])
    assert steps >= 1, info.value.__notes__
    partial = _check_stopped(out, before, info, steps)
    _, saved = io.load_adapter(partial)  # the last good step: finite, loadable
    for name, p in model.named_trainable_parameters():
        assert torch.equal(torch.from_numpy(saved[name]), p.detach()), name


def test_an_exception_mid_run_keeps_the_old_adapter(old_adapter, monkeypatch):
    out, before = old_adapter
    real_step = training.train_step
    calls = []

    def failing_step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_step(*args)

    monkeypatch.setattr(training, "train_step", failing_step)
    model = reft(tiny_llama())
    with pytest.raises(RuntimeError, match="simulated") as info:
        train(model, tiny_tokenizer(), PAIRS, epochs=2, batch_size=1, output_dir=out, overwrite=True,
              save_every=1, **QUIET)
    partial = _check_stopped(out, before, info, 2)
    _, saved = io.load_adapter(partial)
    for name, p in model.named_trainable_parameters():
        assert torch.equal(torch.from_numpy(saved[name]), p.detach()), name


def test_an_interrupt_before_the_first_step_keeps_nothing(old_adapter, monkeypatch):
    out, before = old_adapter
    monkeypatch.setattr(training, "train_step", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt) as info:
        train(reft(tiny_llama()), tiny_tokenizer(), PAIRS, output_dir=out, overwrite=True, **QUIET)
    _check_stopped(out, before, info, 0)


def test_a_failed_run_without_an_old_adapter_leaves_no_output(tmp_path, monkeypatch):
    out = tmp_path / "new"
    monkeypatch.setattr(loss, "lm_loss_sum", lambda logits, labels: (logits.sum() * float("inf"), 1))
    with pytest.raises(FloatingPointError) as info:
        train(reft(tiny_llama()), tiny_tokenizer(), PAIRS, output_dir=out, **QUIET)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    assert "nothing to keep" in info.value.__notes__[-1]


def test_loss_plot_beside_the_adapter(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "adapter"
    train(reft(tiny_llama()), tiny_tokenizer(), PAIRS, epochs=2, batch_size=2, eval_examples=PAIRS[:1],
          output_dir=out, **QUIET)
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_matplotlib_no_plot(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib… raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    out = tmp_path / "adapter"
    train(reft(tiny_llama()), tiny_tokenizer(), PAIRS, epochs=1, batch_size=2, output_dir=out, **QUIET)
    assert (out / LOG_FILE).is_file() and not (out / PLOT_FILE).exists()


def test_same_seed_same_adapter_bytes(tmp_path):
    """Bit-for-bit CPU reproducibility with the default schedule, down to the saved file."""
    for name in ("a", "b"):
        train(reft(tiny_llama()), tiny_tokenizer(), PAIRS, min_steps=6, batch_size=2, seed=3,
              output_dir=tmp_path / name, **QUIET)
    assert (tmp_path / "a" / io.WEIGHTS_FILE).read_bytes() == (tmp_path / "b" / io.WEIGHTS_FILE).read_bytes()


def test_prompt_format_is_saved_with_the_adapter(tmp_path):
    from minireft.hf.model import ReftModel
    from minireft.hf.prompt_format import read_prompt_format, template_sha256

    tok = tiny_tokenizer()
    model = reft(tiny_llama())
    train(model, tok, PAIRS, epochs=1, batch_size=2, chat_template=True, output_dir=tmp_path / "a", **QUIET)
    fmt = read_prompt_format(tmp_path / "a")
    assert fmt.chat_template is True and fmt.chat_template_sha256 == template_sha256(tok) is not None
    meta = json.loads((tmp_path / "a" / io.CONFIG_FILE).read_text())
    assert meta["prompt_format"] == fmt.to_dict()
    model.detach()
    loaded = ReftModel.from_pretrained(tiny_llama(), tmp_path / "a")
    assert loaded.prompt_format == fmt
    # and save_pretrained, from Python, without train(): the attribute travels
    loaded.save_pretrained(tmp_path / "b")
    assert read_prompt_format(tmp_path / "b") == fmt
