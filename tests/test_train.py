"""Training: tokenisation and label masking, the schedule, gradient accumulation, seeds,
frozen base, interrupts, evaluation, and classification with a tiny BERT.

Every model here is a tiny random one built from a config, with a character-level
tokenizer built in the test: nothing is downloaded, each test takes about a second.
"""

from __future__ import annotations

import hashlib
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from minireft import ReftConfig
from minireft.hf import loss as loss_mod
from minireft.hf.classify import ReftClassifier
from minireft.hf.data import IGNORE_INDEX, collate, encode_example, encode_examples
from minireft.hf.generation import generate_text
from minireft.hf.loss import lm_loss_sum, loss_sum
from minireft.hf.evaluation import mean_loss
from minireft.hf.training import linear_schedule, train
from minireft.hf import attach

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")

# A memorisable toy task: each prompt has a one-character completion (then EOS).
PAIRS = [
    {"prompt": "cat", "completion": "m"},
    {"prompt": "dog", "completion": "w"},
    {"prompt": "cow", "completion": "o"},
    {"prompt": "duck", "completion": "q"},
]


def tiny_tokenizer(*, bos: bool = True, cls_sep: bool = False):
    """Character-level tokenizer: <pad>=0 <s>=1 </s>=2 <unk>=3, then printable ASCII.

    bos: prepend <s> to every encoded text (as Llama's tokenizer does);
    cls_sep: wrap as "<s> text </s>" instead (BERT's [CLS] … [SEP]).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if cls_sep:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    elif bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 128
    return fast


def tiny_llama(seed: int = 0, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         initializer_range=0.2)  # larger than HF's 0.02, so logits can move
    return LlamaForCausalLM(config).to(dtype).eval()


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, pad_token_id=0)
    return BertModel(config, add_pooling_layer=False).eval()


def reft(model, *, layers=(0, 1), rank=2, positions="f1+l1", dtype="float32", seed=0, **kw):
    config = ReftConfig(layers=layers, rank=rank, positions=positions, dtype=dtype, **kw)
    return attach(model, config, seed=seed)


def params_of(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_trainable_parameters()}


def checksum(module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())  # any dtype, bitwise
    return h.hexdigest()


QUIET = {"progress": False}

# Most runs here are a few steps on purpose; test_few_steps_warn_once checks the warning.
pytestmark = [pytest.mark.filterwarnings("ignore:this run takes:UserWarning"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py


# ---------------------------------------------------------------------------- data


def test_encode_masks_prompt_and_appends_eos():
    tok = tiny_tokenizer()
    e = encode_example(tok, {"prompt": "ab", "completion": "cd"})
    a, b, c, d = (tok.convert_tokens_to_ids(x) for x in "abcd")
    assert e["input_ids"] == [1, a, b, c, d, 2], e
    assert e["labels"] == [IGNORE_INDEX] * 3 + [c, d, 2], e
    assert e["prompt_length"] == 3


def test_encode_chat_template_adds_bos_once():
    tok = tiny_tokenizer()
    e = encode_example(tok, {"prompt": "hi", "completion": "yo"}, chat_template=True)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False)
    want_prompt = tok(text, add_special_tokens=False)["input_ids"]
    assert e["input_ids"][: e["prompt_length"]] == want_prompt
    assert e["input_ids"].count(1) == 1, f"BOS appears more than once: {e['input_ids']}"
    assert e["labels"][: e["prompt_length"]] == [IGNORE_INDEX] * e["prompt_length"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_labels_with_ignore_index(side):
    tok = tiny_tokenizer()
    enc = encode_examples(tok, [{"prompt": "a", "completion": "b"}, {"prompt": "abcd", "completion": "efgh"}])
    batch = collate(enc, 0, padding_side=side)
    mask, labels = batch["attention_mask"], batch["labels"]
    assert batch["input_ids"].shape == labels.shape == mask.shape == (2, 10)
    assert batch["prompt_lengths"].tolist() == [2, 5]
    assert mask.sum(1).tolist() == [4, 10]
    assert (labels[mask == 0] == IGNORE_INDEX).all(), labels
    real = labels[0][mask[0].bool()].tolist()
    assert real == enc[0]["labels"]
    assert (mask[0, :4] == 1).all() if side == "right" else (mask[0, -4:] == 1).all()


def test_loss_counts_completion_tokens_only():
    """lm_loss_sum equals the cross-entropy over completion targets, and logits at
    positions that predict prompt or padding tokens do not change it."""
    tok = tiny_tokenizer()
    enc = encode_examples(tok, [{"prompt": "ab", "completion": "c"}, {"prompt": "abcd", "completion": "ef"}])
    batch = collate(enc, 0)
    labels = batch["labels"]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*labels.shape, 99, generator=g, dtype=torch.float64)  # (B, T, V)
    loss, n = lm_loss_sum(logits, labels)
    assert n == 2 + 3, n  # completion "c"+eos and "ef"+eos
    want = 0.0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE_INDEX:
                want -= torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]].item()
    assert abs(loss.item() - want) < 1e-9, (loss.item(), want)
    unsupervised = torch.ones_like(labels, dtype=torch.bool)
    unsupervised[:, :-1] = labels[:, 1:] == IGNORE_INDEX  # positions whose next token is not a target
    noisy = logits.clone()
    noisy[unsupervised] += 100 * torch.randn(int(unsupervised.sum()), 99, generator=g, dtype=torch.float64)
    assert abs(lm_loss_sum(noisy, labels)[0].item() - want) < 1e-9


def _no_logits_to_keep(model):
    """`model` whose forward does not take logits_to_keep (train() then slices before the head)."""
    cls = type(model)

    class Plain(cls):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None,
                    **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids, use_cache=use_cache)

    model.__class__ = Plain
    return model


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma3", "plain"])
def test_training_loss_builds_logits_only_where_labels_are(name):
    """The training loss asks the model for logits at the K positions whose next token is a
    target (logits_to_keep, or slicing before the head), and equals lm_loss_sum on the full
    logits; Gemma's final logit softcapping still applies."""
    from tiny_models import build

    overrides = {"final_logit_softcapping": 2.0} if name == "gemma3" else {}
    model, _ = build("llama" if name == "plain" else name, dtype=torch.float64, **overrides)
    if name == "plain":
        model = _no_logits_to_keep(model)
    r = reft(model, layers=(0, 2), dtype="float64")
    examples = [{"prompt": "abcdefg", "completion": "h"}, {"prompt": "ab", "completion": "cdef"}]
    batch = collate(encode_examples(tiny_tokenizer(), examples), 0, padding_side="left")
    widths = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: widths.append(out.shape[1]))
    loss, _ = loss_sum(r, batch, "lm")
    handle.remove()
    full = r(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
             prompt_lengths=batch["prompt_lengths"], use_cache=False).logits
    want, n = lm_loss_sum(full, batch["labels"])
    supervised = (batch["labels"][:, 1:] != IGNORE_INDEX).any(0).sum().item()
    assert widths[0] == supervised < batch["labels"].shape[1] - 1, (widths, supervised)
    assert n == 2 + 5
    assert abs(loss.item() - want.item()) <= 1e-12 * abs(want.item()), (loss.item(), want.item())
    if name == "gemma3":
        assert full.abs().max() <= 2.0, "softcapping did not apply"


@pytest.mark.parametrize("example, error, words", [
    ({"completion": "x"}, KeyError, ["example 1", "'prompt'"]),
    ({"prompt": "x"}, KeyError, ["example 1", "'completion'"]),
    ({"prompt": "  ", "completion": "x"}, ValueError, ["example 1", "empty prompt"]),
    ({"prompt": "y" * 40, "completion": "x"}, ValueError, ["example 1", "41 tokens", "max_length=16"]),
    ({"prompt": 3, "completion": "x"}, TypeError, ["example 1", "string"]),
    ("prompt", TypeError, ["example 1", "dict"]),
])
def test_bad_examples_name_the_index(example, error, words):
    with pytest.raises(error) as info:
        encode_examples(tiny_tokenizer(), [PAIRS[0], example], max_length=16)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_completion_truncated_to_max_length():
    e = encode_example(tiny_tokenizer(), {"prompt": "ab", "completion": "c" * 50}, max_length=8)
    assert len(e["input_ids"]) == len(e["labels"]) == 8 and e["prompt_length"] == 3


# ---------------------------------------------------------------------------- schedule


def test_linear_schedule_values():
    """w = 4 of T = 20: step t = s + 1 runs at t / 4 while t <= 4, then (20 − s) / 16; never 0."""
    f = linear_schedule(warmup_steps=4, total_steps=20)
    assert [f(s) for s in (0, 1, 2, 3)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(12) == 0.5 and f(19) == 1 / 16
    assert min(f(s) for s in range(20)) > 0
    assert linear_schedule(0, 5)(0) == 1.0, "without warmup the first step runs at the full lr"


def test_train_follows_the_schedule():
    """10 examples, batch 2, 2 epochs → 10 steps; warmup ⌈0.2·10⌉ = 2 steps."""
    tok = tiny_tokenizer()
    model = reft(tiny_llama())
    examples = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)]
    result = train(model, tok, examples, epochs=2, batch_size=2, lr=1e-2, warmup_ratio=0.2, **QUIET)
    assert result.steps == result.total_steps == 10 and len(result.losses) == 10
    want = [1e-2 * t / 2 for t in (1, 2)] + [1e-2 * (10 - s) / 8 for s in range(2, 10)]
    assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15) for a, b in zip(result.lrs, want)), result.lrs
    assert min(result.lrs) > 0


@pytest.mark.parametrize("n, batch_size, epochs, min_steps, max_steps, want", [
    (4, 2, None, 64, None, (32, 64)),     # small data: ⌈64 / 2⌉ epochs of 2 steps
    (4, 3, None, 5, None, (3, 6)),        # whole epochs: ⌈5 / 2⌉ = 3 epochs, 6 ≥ 5 steps
    (100, 8, None, 5, None, (1, 13)),     # large data: one epoch
    (4, 2, None, 64, 7, (4, 7)),          # max_steps alone sets the length
    (4, 2, 3, 64, None, (3, 6)),          # explicit epochs win over min_steps
    (4, 2, 3, 64, 5, (3, 5)),             # and max_steps caps them
])
def test_schedule_length(n, batch_size, epochs, min_steps, max_steps, want):
    from minireft.hf.recipe import schedule

    got = schedule(n, batch_size=batch_size, grad_accum=1, epochs=epochs, min_steps=min_steps,
                   max_steps=max_steps)
    assert (got[0], got[2]) == want and got[1] == -(-n // batch_size)


def test_default_run_of_a_one_row_file_takes_min_steps_and_learns():
    """One example, no tuning: min_steps steps, none at lr 0, and the loss goes down."""
    from minireft.hf.recipe import TRAIN

    tok = tiny_tokenizer()
    model = reft(tiny_llama(), rank=4, positions="f2+l2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no few-steps warning either
        result = train(model, tok, PAIRS[:1], **QUIET)
    assert result.steps == result.total_steps == TRAIN.min_steps == result.epochs
    assert min(result.lrs) > 0
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses[::8]


def test_default_prompt_format_is_the_chat_template_when_the_tokenizer_has_one():
    """chat_template=None: chat-wrapped prompts when the tokenizer has a template (recorded on
    the adapter, and the loss is that of the wrapped examples), raw prompts when it has none."""
    with_template, without = tiny_tokenizer(), tiny_tokenizer()
    without.chat_template = None
    for tok, chat in ((with_template, True), (without, False)):
        model = reft(tiny_llama(), rank=2, positions="f1+l1")
        result = train(model, tok, PAIRS, max_steps=1, batch_size=len(PAIRS), **QUIET)
        assert model.prompt_format.chat_template is chat
        fresh = reft(tiny_llama(), rank=2, positions="f1+l1")  # the same init: step 0's loss
        want = mean_loss(fresh, tok, PAIRS, chat_template=chat)["loss"]
        other = mean_loss(fresh, tok, PAIRS, chat_template=not chat)["loss"] if tok.chat_template else None
        fresh.detach()
        assert result.losses[0] == pytest.approx(want, rel=1e-5)
        assert other is None or other != pytest.approx(want, rel=1e-3)
    classifier = ReftClassifier(reft(tiny_llama(), rank=2, positions="f1+l1"), 2)
    train(classifier, with_template, [{"text": "a b", "label": 1}], max_steps=1, **QUIET)
    assert classifier.reft_model.prompt_format.chat_template is False


def test_few_steps_warn_once():
    from minireft.hf.recipe import FEW_STEPS

    with pytest.warns(UserWarning, match=rf"this run takes 2 optimizer step\(s\), fewer than {FEW_STEPS}") as record:
        train(reft(tiny_llama()), tiny_tokenizer(), PAIRS, epochs=1, batch_size=2, **QUIET)
    assert len([w for w in record if "optimizer step" in str(w.message)]) == 1


def test_train_defaults_come_from_the_recipe():
    """One place: every recipe field is a train() parameter whose default is that field."""
    import dataclasses
    import inspect

    from minireft.hf.recipe import TRAIN

    signature = inspect.signature(train).parameters
    for f in dataclasses.fields(TRAIN):
        assert signature[f.name].default == getattr(TRAIN, f.name), f.name


# ---------------------------------------------------------------------------- the loop


def _run(batch_size, grad_accum, *, seed=0, dtype=torch.float64, **kw):
    tok = tiny_tokenizer()
    model = reft(tiny_llama(dtype=dtype), dtype="float64" if dtype == torch.float64 else "float32")
    # completions of different lengths, so micro-batches hold different token counts
    examples = [{"prompt": f"q{i}x", "completion": "z" * (1 + 3 * (i % 4))} for i in range(8)]
    result = train(model, tok, examples, batch_size=batch_size, grad_accum=grad_accum, epochs=2,
                   lr=1e-2, warmup_ratio=0.0, seed=seed, **QUIET, **kw)
    return model, result


def test_grad_accumulation_equals_one_big_batch():
    """2 micro-batches of 4 and 1 batch of 8: the same updates (token-weighted loss)."""
    big, r_big = _run(8, 1)
    acc, r_acc = _run(4, 2)
    assert r_big.steps == r_acc.steps == 2
    for (name, p), (_, q) in zip(big.named_trainable_parameters(), acc.named_trainable_parameters()):
        err = (p - q).abs().max().item()
        assert err < 1e-6, f"{name}: max |Δ| = {err:.3e} between batch 8 and 2×4"
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(r_big.losses, r_acc.losses))


def test_cpu_length_chunks_give_the_one_batch_gradient(monkeypatch):
    """On a CPU a micro-batch runs as sub-batches of similar length: the same updates and
    losses as the whole micro-batch at once (float64, to 1e-9 relative)."""
    from minireft.hf import batching

    calls = []
    chunks = batching.length_chunks
    monkeypatch.setattr(batching, "length_chunks", lambda *a: calls.append(chunks(*a)) or calls[-1])
    monkeypatch.setattr(batching, "CHUNK_OVERHEAD_TOKENS", 0)  # split wherever lengths differ
    split, r_split = _run(8, 1)
    assert calls and all(len(c) > 1 for c in calls), calls
    monkeypatch.setattr(batching, "CHUNK_OVERHEAD_TOKENS", 10 ** 9)  # never split
    calls.clear()
    whole, r_whole = _run(8, 1)
    assert calls and all(len(c) == 1 for c in calls), calls
    for (name, p), (_, q) in zip(split.named_trainable_parameters(), whole.named_trainable_parameters()):
        err = (p - q).abs().max().item()
        assert err < 1e-9, f"{name}: max |Δ| = {err:.3e} between length chunks and one batch"
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(r_split.losses, r_whole.losses))


@pytest.mark.parametrize("lengths", [[5], [3, 3, 3], [50, 150, 60, 55], [9, 1, 9, 4, 7, 2], [30, 31, 90, 91, 92]])
@pytest.mark.parametrize("overhead", [0, 8, 64])
def test_length_chunks_partition_minimises_padded_positions(lengths, overhead):
    """Every row once, and no set partition of the rows (all of them, brute force) computes
    fewer padded positions plus per-chunk overhead."""
    from minireft.hf.batching import length_chunks

    rows = list(range(len(lengths)))
    got = length_chunks(rows, lengths, overhead)
    assert sorted(i for c in got for i in c) == rows

    def cost(partition):
        return sum(overhead + len(c) * max(lengths[i] for i in c) for c in partition)

    def partitions(items):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for p in partitions(rest):
            yield [[first], *p]
            for k in range(len(p)):
                yield [*p[:k], [first, *p[k]], *p[k + 1:]]

    assert cost(got) == min(cost(p) for p in partitions(rows))


def test_same_seed_same_bits():
    """Dropout on the edit draws random numbers too; the seed fixes them and the order."""
    runs = []
    for _ in range(2):
        tok = tiny_tokenizer()
        model = reft(tiny_llama(), dropout=0.2)
        train(model, tok, PAIRS, epochs=3, batch_size=2, seed=7, **QUIET)
        runs.append(params_of(model))
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), f"{name} differs between two seed-7 runs"
    model = reft(tiny_llama(), dropout=0.2)
    train(model, tiny_tokenizer(), PAIRS, epochs=3, batch_size=2, seed=8, **QUIET)
    assert any(not torch.equal(runs[0][n], p) for n, p in params_of(model).items()), "seed had no effect"


def test_package_level_train_is_callable():
    import minireft.hf

    result = minireft.hf.train(reft(tiny_llama()), tiny_tokenizer(), PAIRS, batch_size=4, epochs=1,
                               **QUIET)
    assert result.steps == 1


def test_base_frozen_unchanged_and_in_eval_mode():
    tok = tiny_tokenizer()
    base = tiny_llama()
    before = checksum(base)
    model = reft(base)
    seen = []
    base.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    start = params_of(model)
    modes = [m.training for m in model.modules()]
    train(model, tok, PAIRS, epochs=2, batch_size=2, **QUIET)
    assert seen and not any(seen), "the base model ran in train mode (its dropout on)"
    assert all(not p.requires_grad for p in base.parameters())
    assert checksum(base) == before, "training changed the base model's weights"
    assert any(not torch.equal(start[n], p) for n, p in params_of(model).items()), "nothing trained"
    assert [m.training for m in model.modules()] == modes, "train() did not restore the modes"


def test_prompt_lengths_reach_the_model():
    """Only prompt tokens are edited: train passes each row's prompt length to the ReftModel."""
    tok = tiny_tokenizer()
    model = reft(tiny_llama())
    seen = []
    forward = model.forward
    model.forward = lambda *a, **kw: (seen.append(kw["prompt_lengths"].tolist()), forward(*a, **kw))[1]
    train(model, tok, PAIRS, batch_size=4, epochs=1, seed=0, chat_template=False, **QUIET)
    want = sorted(len(tok(ex["prompt"])["input_ids"]) for ex in PAIRS)  # raw prompts' lengths
    assert len(seen) == 1 and sorted(seen[0]) == want, (seen, want)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cuda_syncs(fn) -> dict:
    """{"file:line": count} of the synchronising CUDA calls fn() makes (the Python line that
    made each call: for a C++ op, the line that ran it)."""
    from collections import Counter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


@needs_cuda
def test_cuda_training_step_reads_the_device_once():
    """On CUDA a step of train() (2 micro-batches) makes one host sync of its own: the
    non-finite check in minireft/hf/training.py. Counted as the difference between runs of 8
    and 4 steps, per source line; the base model's own checks (transformers) and torch's
    error check inside the retraction's SVD are reported, not counted as ours."""
    tok = tiny_tokenizer()
    examples = [{"prompt": f"q{i}", "completion": "ab"[i % 2] * (1 + i % 3)} for i in range(32)]

    def run(steps):
        train(reft(tiny_llama().cuda()), tok, examples, batch_size=2, grad_accum=2, max_steps=steps,
              epochs=1, **QUIET)

    run(1)  # warm-up: CUDA context, pinned memory pools
    four, eight = _cuda_syncs(lambda: run(4)), _cuda_syncs(lambda: run(8))
    per_step = {where: (eight[where] - four[where]) / 4 for where in set(eight) | set(four)}
    ours = {w: n for w, n in per_step.items()
            if n and ("/minireft/hf/" in w or "/minireft/torch/" in w) and "stiefel.py" not in w}
    assert sum(ours.values()) == 1 and all("training.py" in w for w in ours), (
        f"minireft's host syncs per step: {ours}; all: {per_step}")


def test_bf16_base_trains_float32_adapter():
    tok = tiny_tokenizer()
    base = tiny_llama(dtype=torch.bfloat16)
    before = checksum(base)
    model = reft(base, rank=4, positions="f2+l2")
    result = train(model, tok, PAIRS, epochs=10, batch_size=4, lr=5e-2, **QUIET)
    assert all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < result.losses[0], result.losses
    assert all(p.dtype == torch.float32 for _, p in model.named_trainable_parameters())
    assert checksum(base) == before


def test_unfrozen_base_is_refused():
    model = reft(tiny_llama())
    next(model.model.parameters()).requires_grad_(True)
    with pytest.raises(RuntimeError, match="require grad"):
        train(model, tiny_tokenizer(), PAIRS, **QUIET)


def test_loss_decreases_on_memorisable_task():
    tok = tiny_tokenizer()
    model = reft(tiny_llama(), layers=(0, 1), rank=4, positions="f2+l2")
    first = mean_loss(model, tok, PAIRS)["loss"]
    result = train(model, tok, PAIRS, epochs=30, batch_size=4, lr=5e-2, **QUIET)
    last = mean_loss(model, tok, PAIRS)["loss"]
    assert last < 0.3 * first, f"held-in loss went {first:.3f} → {last:.3f}; losses {result.losses[::6]}"
    got = [generate_text(model, tok, ex["prompt"], max_new_tokens=3) for ex in PAIRS]
    assert got == [ex["completion"] for ex in PAIRS], got


def test_left_and_right_padding_agree():
    """Positions count real tokens (and decoders get position_ids): the padding side changes nothing."""
    tok = tiny_tokenizer()
    examples = [{"prompt": "a", "completion": "bcdef"}, {"prompt": "ghijkl", "completion": "m"}]
    runs = {}
    for side in ("right", "left"):
        model = reft(tiny_llama(dtype=torch.float64), dtype="float64")
        before = mean_loss(model, tok, examples, padding_side=side)["loss"]
        train(model, tok, examples, epochs=3, batch_size=2, lr=1e-2, padding_side=side, **QUIET)
        runs[side] = (before, params_of(model))
    assert abs(runs["right"][0] - runs["left"][0]) < 1e-12, (runs["right"][0], runs["left"][0])
    for name, p in runs["right"][1].items():
        err = (p - runs["left"][1][name]).abs().max().item()
        assert err < 1e-9, f"{name}: right vs left padding differ by {err:.3e}"


def test_mean_loss_batches_by_length_and_matches_one_row_at_a_time():
    """mean_loss() runs rows longest first; the loss is the same token-weighted sum as row by row."""
    tok = tiny_tokenizer()
    examples = [{"prompt": "a", "completion": "bcdefghij"}, {"prompt": "ghijkl", "completion": "m"},
                {"prompt": "no", "completion": "pq"}, {"prompt": "rstuvwxyz ab", "completion": "cd"},
                {"prompt": "e", "completion": "f"}]
    model = reft(tiny_llama(dtype=torch.float64), dtype="float64")
    whole = mean_loss(model, tok, examples, batch_size=2)
    rows = [mean_loss(model, tok, [ex], batch_size=1) for ex in examples]
    want = sum(r["loss"] * r["targets"] for r in rows) / sum(r["targets"] for r in rows)
    assert whole["targets"] == sum(r["targets"] for r in rows)
    assert abs(whole["loss"] - want) < 1e-12, (whole["loss"], want)


def test_max_steps_and_log_lines(capsys):
    tok = tiny_tokenizer()
    result = train(reft(tiny_llama()), tok, PAIRS, epochs=5, batch_size=1, max_steps=3, log_every=1,
                   progress=False)
    assert result.steps == result.total_steps == 3 and len(result.lrs) == 3
    err = capsys.readouterr().err
    assert [line.split()[:2] for line in err.splitlines()] == [["step", f"{i}/3"] for i in (1, 2, 3)], err


def test_non_finite_loss_stops_before_its_step(monkeypatch):
    tok = tiny_tokenizer()
    model = reft(tiny_llama())
    start = params_of(model)
    monkeypatch.setattr(loss_mod, "lm_loss_sum", lambda logits, labels: (logits.sum() * float("nan"), 1))
    with pytest.raises(FloatingPointError, match="loss of step 1 is nan"):
        train(model, tok, PAIRS, batch_size=2, **QUIET)
    assert all(torch.equal(p, start[n]) for n, p in params_of(model).items())


def test_progress_bar_shows_loss_and_can_be_disabled(capsys):
    tok = tiny_tokenizer()
    train(reft(tiny_llama()), tok, PAIRS, batch_size=2, epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    train(reft(tiny_llama()), tok, PAIRS, batch_size=2, epochs=1, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "2/2" in err, err


def test_evaluation_each_epoch_and_eval_fn():
    tok = tiny_tokenizer()
    model = reft(tiny_llama())
    calls = []

    def eval_fn(m):
        calls.append(m.training)
        return {"custom": 1.5}

    result = train(model, tok, PAIRS[:2], eval_examples=PAIRS[2:], epochs=3, batch_size=2,
                   eval_fn=eval_fn, **QUIET)
    assert [r["step"] for r in result.evals] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["custom"] == 1.5 and r["targets"] == 2 + 2 for r in result.evals)
    assert calls == [False] * 3, "eval_fn saw the model in train mode"


def test_interrupt_keeps_last_completed_step(tmp_path):
    """A KeyboardInterrupt in step 3's forward leaves step 2's parameters, kept in a partial folder."""
    tok = tiny_tokenizer()
    model = reft(tiny_llama())
    snapshots = []
    forwards = []

    def boom(module, args):
        forwards.append(1)
        if len(forwards) == 3:
            raise KeyboardInterrupt

    model.model.register_forward_pre_hook(boom)
    modes = [m.training for m in model.modules()]
    with pytest.raises(KeyboardInterrupt) as info:
        train(model, tok, PAIRS, epochs=2, batch_size=1, eval_fn=lambda m: snapshots.append(params_of(m)),
              eval_every=1, output_dir=tmp_path / "ckpt", **QUIET)
    # eval_fn ran after steps 1 and 2 (its forward calls are none: it only copies)
    assert len(snapshots) == 2
    for name, p in params_of(model).items():
        assert torch.equal(p, snapshots[-1][name]), f"{name} is not step 2's value"
    assert [m.training for m in model.modules()] == modes
    from minireft.io import load_adapter

    assert not (tmp_path / "ckpt").exists(), "a stopped run wrote its output folder"
    (partial,) = tmp_path.glob("ckpt.partial-*")
    assert str(partial) in info.value.__notes__[-1] and "after step 2 of 8" in info.value.__notes__[-1]
    _, saved = load_adapter(partial)
    for name, p in snapshots[-1].items():
        assert torch.equal(torch.from_numpy(saved[name]), p), name


def test_interrupt_inside_optimizer_step_is_undone(monkeypatch):
    """ReftOptimizer.step computes every new value before it writes any: a KeyboardInterrupt
    raised inside step 2's own computation (the Stiefel stacks and one AdamW update already
    computed) leaves step 1's parameters, with no copy of them taken by train()."""
    from minireft.torch import optim

    tok = tiny_tokenizer()
    model = reft(tiny_llama())
    snapshots, armed = [], []
    real_adamw = optim.adamw_step

    def adamw_then_interrupt(*args, **kwargs):
        if snapshots:  # step 2: let one update through, interrupt the next
            armed.append(1)
            if len(armed) == 2:
                raise KeyboardInterrupt
        return real_adamw(*args, **kwargs)

    monkeypatch.setattr(optim, "adamw_step", adamw_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, PAIRS, batch_size=2, eval_fn=lambda m: snapshots.append(params_of(m)),
              eval_every=1, **QUIET)
    assert len(snapshots) == 1 and len(armed) == 2, "the interrupt did not land inside step 2"
    for name, p in params_of(model).items():
        assert torch.equal(p, snapshots[0][name]), f"{name} kept part of an interrupted step"
        assert p.grad is None


def test_checkpoint_written_every_n_steps(tmp_path):
    tok = tiny_tokenizer()
    model = reft(tiny_llama())
    out = tmp_path / "adapter"
    train(model, tok, PAIRS, epochs=2, batch_size=2, output_dir=out, save_every=1, **QUIET)
    from minireft.io import load_adapter

    config, saved = load_adapter(out)
    assert config == model.config
    for name, p in model.named_trainable_parameters():
        assert any(torch.equal(torch.from_numpy(v), p.detach()) for v in saved.values()), name


# ---------------------------------------------------------------------------- classification


def toy_classification(n: int, seed: int):
    """Label 1 when the string holds a 'b', else 0: separable from the characters alone."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        length = int(torch.randint(3, 7, (1,), generator=g))
        chars = ["a", "c", "d"]
        text = "".join(chars[int(j)] for j in torch.randint(0, 3, (length,), generator=g))
        label = i % 2
        if label:
            k = int(torch.randint(0, length, (1,), generator=g))
            text = text[:k] + "b" + text[k + 1:]
        examples.append({"text": text, "label": label})
    return examples


def test_classification_on_tiny_bert(tmp_path):
    tok = tiny_tokenizer(cls_sep=True)
    base = tiny_bert()
    before = checksum(base)
    # Mean pooling: in a random encoder [CLS] attends almost uniformly and carries little
    # (the paper's [CLS] head relies on pretraining); the mean of the edited tokens carries the 'b'.
    clf = ReftClassifier(reft(base, layers=(0, 1), rank=4, positions="f3+l3"), num_labels=2, pooling="mean")
    train_set, held_out = toy_classification(64, 0), toy_classification(32, 1)
    chance = mean_loss(clf, tok, held_out)["accuracy"]
    result = train(clf, tok, train_set, eval_examples=held_out, epochs=12, batch_size=16, lr=2e-2, **QUIET)
    accuracy = result.evals[-1]["accuracy"]
    assert accuracy >= 0.85, f"held-out accuracy {chance:.2f} → {accuracy:.2f}; evals {result.evals}"
    assert checksum(base) == before
    # the head and the adapter round-trip through disk
    clf.save_pretrained(tmp_path / "clf")
    again = ReftClassifier.from_pretrained(tiny_bert(), tmp_path / "clf")
    batch = collate(encode_examples(tok, held_out[:8], task="classification"), 0)
    args = (batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(again(*args), clf(*args), rtol=0, atol=1e-6)


def test_pooling_skips_padding_on_either_side():
    from minireft.hf.classify import pool

    h = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 4, 3)  # (B, T, d)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])  # left-padded row 0, right-padded row 1
    torch.testing.assert_close(pool(h, mask, "first"), torch.stack([h[0, 2], h[1, 0]]))
    torch.testing.assert_close(pool(h, mask, "mean"), torch.stack([h[0, 2:].mean(0), h[1, :3].mean(0)]))


def test_classification_needs_a_classifier_and_valid_labels():
    tok = tiny_tokenizer(cls_sep=True)
    with pytest.raises(ValueError, match="ReftClassifier"):
        train(reft(tiny_bert()), tok, [{"text": "ab", "label": 1}], task="classification", **QUIET)
    clf = ReftClassifier(reft(tiny_bert()), num_labels=2)
    with pytest.raises(ValueError, match=r"train_examples\[1\] has label 2"):
        train(clf, tok, [{"text": "ab", "label": 1}, {"text": "cd", "label": 2}], **QUIET)
    with pytest.raises(KeyError, match="example 0 has no 'label'"):
        train(clf, tok, [{"text": "ab"}], **QUIET)
