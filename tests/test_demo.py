"""The demo's logic on a tiny random Llama and a word-level tokenizer built in memory (no
files, no download, a few seconds): accuracy definitions, training, generations, the saved
adapter and results, detach, the summary; an adapter already in the output folder."""

from __future__ import annotations

import json
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from minireft import io
from minireft.demo.datasets import RT_PROMPT

REVIEWS = [
    ("a warm and funny film", 1), ("great acting and a great story", 1), ("a joy from start to end", 1),
    ("the best film of the year", 1), ("dull and far too long", 0), ("a boring mess", 0),
    ("the worst script of the year", 0), ("flat jokes and dull acting", 0),
]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _examples():
    return [{"prompt": RT_PROMPT.format(text=t), "completion": "positive" if y else "negative", "label": y}
            for t, y in REVIEWS]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    texts = [e["prompt"] for e in _examples()] + ["positive negative user assistant system"]
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text)})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "<|im_end|>", "<|im_start|>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def _model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=3, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.mark.filterwarnings("ignore:this run takes:UserWarning")
def test_run_demo_on_a_tiny_model(tmp_path, one_thread):
    from minireft.demo.demo import RESULTS_FILE, format_summary, label_accuracy, run_demo
    from minireft.hf.model import ReftModel

    tokenizer = _tokenizer()
    model = _model(len(tokenizer))
    examples = _examples()
    ids = torch.tensor([tokenizer("Review : great", add_special_tokens=False)["input_ids"]])
    base_logits = model(input_ids=ids).logits

    lines = []
    results = run_demo(tmp_path / "demo", model=model, tokenizer=tokenizer, train_examples=examples,
                       eval_examples=examples, layers=(1,), rank=2, positions="l2", epochs=3, batch_size=4,
                       lr=2e-2, n_generations=2, max_new_tokens=3, progress=False, log=lines.append)

    for key in ("before", "after"):
        r = results[key]
        assert r["n"] == len(examples)
        assert 0 <= r["strict_accuracy"] <= r["accuracy"] <= 1 and 0 <= r["answer_rate"] <= 1
        assert r["strict_accuracy"] <= r["answer_rate"]
    assert results["trainable_parameters"] == 2 * 2 * 32 + 2  # one group (suffix) at one layer: R, W, b
    assert results["steps"] == 3 * 2 and results["losses"][-1] < results["losses"][0]
    assert len(results["generations"]) == 2 and {"base", "adapter", "label"} <= set(results["generations"][0])

    # the adapter and the results are on disk; the model is the base model again
    config, params = io.load_adapter(tmp_path / "demo")
    assert config.layers == (1,) and config.rank == 2 and set(params) == {"1.suffix.R", "1.suffix.W", "1.suffix.b"}
    from minireft.hf.prompt_format import read_prompt_format

    assert read_prompt_format(tmp_path / "demo").chat_template is True, "the demo's chat prompts"
    saved = json.loads((tmp_path / "demo" / RESULTS_FILE).read_text())
    assert saved["after"] == results["after"] and saved["trainable_parameters"] == results["trainable_parameters"]
    assert torch.equal(model(input_ids=ids).logits, base_logits)
    assert all(p.requires_grad for p in model.parameters())
    reloaded = ReftModel.from_pretrained(model, tmp_path / "demo")
    try:
        assert label_accuracy(reloaded, tokenizer, examples) == results["after"]
    finally:
        reloaded.detach()

    summary = "\n".join(lines)
    assert format_summary(results) in summary
    for text in ("zero-shot", "LoReFT", "trainable parameters", "held-out accuracy", "adapter saved to"):
        assert text in summary


def test_label_accuracy_definitions(one_thread):
    """accuracy compares the two label words' first-token scores; strict needs the argmax."""
    from minireft.demo.demo import label_accuracy, label_token_ids

    tokenizer = _tokenizer()
    negative, positive = label_token_ids(tokenizer)
    examples = _examples()[:2] + _examples()[-2:]  # labels 1, 1, 0, 0

    class Fixed(torch.nn.Module):  # scores: row 0 right and argmax, row 1 right not argmax, rows 2-3 wrong
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, position_ids, use_cache, logits_to_keep):
            assert logits_to_keep == 1 and bool((attention_mask[:, -1] == 1).all())  # left padded
            logits = torch.zeros(input_ids.shape[0], 1, len(tokenizer))
            logits[:, 0, positive] = torch.tensor([5.0, 2.0, 1.0, 1.0])
            logits[:, 0, negative] = torch.tensor([0.0, 1.0, 0.0, 0.0])
            logits[1, 0, 4] = 9.0  # another token wins the argmax
            return type("Out", (), {"logits": logits})()

    r = label_accuracy(Fixed(), tokenizer, examples, batch_size=4)
    assert r == {"accuracy": 0.5, "strict_accuracy": 0.25, "answer_rate": 0.75, "n": 4}


def test_an_adapter_in_the_output_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import numpy as np

    from minireft import ReftConfig
    from minireft.cli import main
    from minireft.demo.demo import run_demo
    from minireft.hf import loading

    config = ReftConfig(layers=[0], rank=1, positions="l1", init="identity")
    params = {"0.suffix.R": np.eye(1, 4, dtype=np.float32), "0.suffix.W": np.zeros((1, 4), np.float32),
              "0.suffix.b": np.zeros(1, np.float32)}
    out = io.save_adapter(tmp_path / "demo", config, params)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(FileExistsError, match="already holds an adapter"):
        run_demo(out)
    assert main(["demo", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
