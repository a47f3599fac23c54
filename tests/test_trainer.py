"""ReftTrainer: a ReftModel under transformers.Trainer (minireft.hf.trainer).

R stays on St(r, d) under ReftOptimizer; a plain torch optimizer holding R is refused;
checkpoints hold the adapter only; resume_from_checkpoint continues bit-identically;
gradient accumulation gives one big batch's gradient (num_items_in_batch). Tiny random
Llama (tests/tiny_models.py), CPU, no network (report_to=[]).
"""

from __future__ import annotations

import io as pyio

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from tiny_models import VOCAB, build

from minireft import ReftConfig
from minireft import io as reft_io
from minireft.hf.model import ReftModel, attach
from minireft.hf.trainer import ReftDataCollator, ReftTrainer
from minireft.torch.optim import ReftOptimizer
from minireft.torch.stiefel import orthonormality_error

CONFIG = ReftConfig(layers=[1], rank=2, positions="f1+l1")
CHECKPOINT_FILES = {reft_io.CONFIG_FILE, reft_io.WEIGHTS_FILE, "optimizer.pt", "scheduler.pt", "rng_state.pth",
                    "trainer_state.json", "training_args.bin"}


def rows(n: int = 12, seed: int = 0, completions=None) -> list[dict]:
    """n encoded examples (encode_examples' layout): random prompts of 3..7 tokens, completions
    of 1..4 tokens (or the given lengths), labels -100 on the prompt."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = int(torch.randint(3, 8, (1,), generator=gen))
        c = completions[i] if completions is not None else int(torch.randint(1, 5, (1,), generator=gen))
        ids = torch.randint(3, VOCAB, (p + c,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * p + ids[p:], "prompt_length": p})
    return out


def new_reft(config: ReftConfig = CONFIG, seed: int = 0) -> ReftModel:
    model, _ = build("llama")
    return attach(model, config, seed=seed)


def make_args(out, **overrides) -> transformers.TrainingArguments:
    kwargs = {"output_dir": str(out), "use_cpu": True, "report_to": [], "max_steps": 10,
              "per_device_train_batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1,
              "save_strategy": "no", "seed": 0, "disable_tqdm": True, "log_level": "error"}
    return transformers.TrainingArguments(**{**kwargs, **overrides})


def adapter(reft: ReftModel) -> dict:
    return {name: p.detach().clone() for name, p in reft.named_trainable_parameters()}


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


class StopAt(transformers.TrainerCallback):
    """Stops training after optimizer step `step` (a run interrupted there)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class GradsBeforeStep(transformers.TrainerCallback):
    """The adapter's accumulated gradients just before each optimizer step."""

    def __init__(self, reft: ReftModel):
        self.reft, self.grads = reft, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads.append({n: p.grad.clone() for n, p in self.reft.named_trainable_parameters()})


# ---------------------------------------------------------------------------- optimizer


def test_trains_with_reft_optimizer_and_R_stays_orthonormal(tmp_path):
    reft = new_reft()
    before = adapter(reft)
    trainer = ReftTrainer(reft, make_args(tmp_path, learning_rate=5e-2), train_dataset=rows())
    trainer.train()
    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), ReftOptimizer)
    after = adapter(reft)
    for name in ("1.prefix.R", "1.suffix.R"):
        assert (after[name] - before[name]).abs().max() > 1e-3, f"{name} did not move"
        assert orthonormality_error(after[name]) < 1e-5  # float32 after-training bound (SPEC)
    assert not reft.model.training, "the base model must stay in eval mode"
    assert all(not p.requires_grad for p in reft.model.parameters())


def test_reft_optimizer_state_dict_round_trips_exactly():
    reft = new_reft()
    params = dict(reft.named_trainable_parameters())
    opt = ReftOptimizer.for_named_parameters(params.items(), lr=1e-2, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    grads = [{n: torch.randn(p.shape, generator=gen) for n, p in params.items()} for _ in range(3)]

    def step(optimizer, tensors, g):
        for n, p in tensors.items():
            p.grad = g[n].clone()
        optimizer.step()

    for g in grads[:2]:
        step(opt, params, g)
    buffer = pyio.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    copies = {n: torch.nn.Parameter(p.detach().clone()) for n, p in params.items()}
    restored = ReftOptimizer.for_named_parameters(copies.items(), lr=1e-2, weight_decay=0.01)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    step(opt, params, grads[2])
    step(restored, copies, grads[2])
    for n, p in params.items():
        assert torch.equal(p, copies[n]), n


def test_plain_torch_optimizer_holding_R_is_refused(tmp_path):
    reft = new_reft()
    trainable = [p for _, p in reft.named_trainable_parameters()]
    with pytest.raises(ValueError, match=r"AdamW holds R '1\.prefix\.R' as a Euclidean.*ReftOptimizer"):
        ReftTrainer(reft, make_args(tmp_path), train_dataset=rows(),
                    optimizers=(torch.optim.AdamW(trainable, lr=1e-3), None))
    with pytest.raises(ValueError, match=r"holds R '1\.prefix\.R' in a group without manifold='stiefel'"):
        ReftTrainer(reft, make_args(tmp_path), train_dataset=rows(),
                    optimizers=(ReftOptimizer(trainable, lr=1e-3), None))
    trainer = ReftTrainer(reft, make_args(tmp_path), train_dataset=rows(),
                          optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 1e-3}))
    with pytest.raises(ValueError, match=r"optimizer SGD holds R"):
        trainer.create_optimizer()
    with pytest.raises(ValueError, match=r"optim='sgd'"):
        ReftTrainer(reft, make_args(tmp_path, optim="sgd"), train_dataset=rows())


def test_plain_optimizer_is_accepted_without_R(tmp_path):
    reft = new_reft(ReftConfig(layers=[1], rank=2, positions="f1+l1", intervention="direft"))
    opt = torch.optim.AdamW([p for _, p in reft.named_trainable_parameters()], lr=1e-3)
    trainer = ReftTrainer(reft, make_args(tmp_path), train_dataset=rows(), optimizers=(opt, None))
    assert trainer.create_optimizer() is opt


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_holds_the_adapter_only(tmp_path):
    reft = new_reft()
    trainer = ReftTrainer(reft, make_args(tmp_path, max_steps=5, save_strategy="steps", save_steps=5),
                          train_dataset=rows())
    trainer.train()
    checkpoint = tmp_path / "checkpoint-5"
    assert {f.name for f in checkpoint.iterdir()} == CHECKPOINT_FILES
    tensors = safetensors_numpy.load_file(checkpoint / reft_io.WEIGHTS_FILE)
    assert set(tensors) == {n for n, _ in reft.named_trainable_parameters()}
    base_bytes = sum(p.numel() * p.element_size() for p in reft.model.parameters())
    assert sum(f.stat().st_size for f in checkpoint.iterdir()) < base_bytes / 2
    loaded = ReftModel.from_pretrained(build("llama")[0], checkpoint)
    for name, p in loaded.named_trainable_parameters():
        assert torch.equal(p, dict(reft.named_trainable_parameters())[name]), name
    trainer.save_model()  # beside checkpoint-5, which stays as it was
    assert reft_io.is_adapter(tmp_path) and {f.name for f in checkpoint.iterdir()} == CHECKPOINT_FILES


def test_resume_continues_bit_identically(tmp_path):
    config = ReftConfig(layers=[1], rank=2, positions="f1+l1", dropout=0.1)  # the RNG state matters too
    data = rows()  # 12 rows, 2 per step: the run crosses an epoch after the resume
    whole = new_reft(config)
    uninterrupted = ReftTrainer(whole, make_args(tmp_path / "a"), train_dataset=data)
    uninterrupted.train()

    first = ReftTrainer(new_reft(config), make_args(tmp_path / "b", save_strategy="steps", save_steps=5),
                        train_dataset=data, callbacks=[StopAt(5)])
    first.train()
    resumed_reft = new_reft(config, seed=7)  # a different init: the checkpoint must replace it
    resumed = ReftTrainer(resumed_reft, make_args(tmp_path / "b", save_strategy="steps", save_steps=5),
                          train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-5"))

    assert resumed.state.global_step == 10
    assert losses(first) == losses(uninterrupted)[:5]
    assert losses(resumed) == losses(uninterrupted)
    expected, got = adapter(whole), adapter(resumed_reft)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_resume_refuses_an_adapter_of_another_config(tmp_path):
    trainer = ReftTrainer(new_reft(), make_args(tmp_path, max_steps=1, save_strategy="steps", save_steps=1),
                          train_dataset=rows())
    trainer.train()
    other = ReftTrainer(new_reft(ReftConfig(layers=[0], rank=2, positions="f1+l1")),
                        make_args(tmp_path, max_steps=2), train_dataset=rows())
    with pytest.raises(ValueError, match="attach the model with the checkpoint's config"):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


def test_load_best_model_at_end_restores_the_best_adapter(tmp_path):
    reft = new_reft()
    data = rows(4)
    # "Best" = the highest held-out loss, so that it is an early checkpoint and not the last step.
    args = make_args(tmp_path, max_steps=6, learning_rate=5e-2, per_device_eval_batch_size=4, eval_strategy="steps",
                     eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True,
                     metric_for_best_model="eval_loss", greater_is_better=True)
    trainer = ReftTrainer(reft, args, train_dataset=data, eval_dataset=data)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-6")
    _, saved = reft_io.load_adapter(best)
    for name, p in reft.named_trainable_parameters():
        assert torch.equal(p, torch.from_numpy(saved[name])), name


# ---------------------------------------------------------------------------- loss


def test_loss_is_the_models_loss(tmp_path):
    reft = new_reft()
    data = rows(4)
    trainer = ReftTrainer(reft, make_args(tmp_path, per_device_eval_batch_size=4), eval_dataset=data)
    batch = ReftDataCollator()(data)
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, batch)
        hf = reft(batch["input_ids"], batch["attention_mask"], prompt_lengths=batch["prompt_lengths"],
                  labels=batch["labels"]).loss
    assert torch.allclose(ours, hf, rtol=1e-6, atol=0)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(hf.item(), rel=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_cpu_batch_runs_in_sub_batches_of_similar_length_with_the_same_gradient(tmp_path, side):
    """One ~60-token row and three short ones: two sub-batches (1 and 3 rows, each cut to its
    longest row), and the loss and gradient of the whole padded batch."""
    from minireft.hf.data import collate

    data = rows(4, completions=[55, 1, 2, 1])
    batch = ReftDataCollator(padding_side=side)(data)
    runs = {}
    for name, collator in {"parts": ReftDataCollator(padding_side=side),
                           "whole": lambda rows, side=side: collate(rows, 0, padding_side=side)}.items():
        reft = new_reft()
        trainer = ReftTrainer(reft, make_args(tmp_path / name), data_collator=collator)
        shapes = []
        reft.model.model.embed_tokens.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=int((batch["labels"] != -100).sum()))
        loss.backward()
        runs[name] = (loss.detach(), {n: p.grad.clone() for n, p in reft.named_trainable_parameters()}, shapes)
    longest, short = max(len(r["input_ids"]) for r in data), max(len(r["input_ids"]) for r in data[1:])
    assert runs["whole"][2] == [(4, longest)]
    assert sorted(runs["parts"][2]) == [(1, longest), (3, short)]
    assert torch.allclose(runs["parts"][0], runs["whole"][0], rtol=1e-6, atol=0)
    for n, g in runs["whole"][1].items():
        assert torch.allclose(runs["parts"][1][n], g, rtol=1e-5, atol=1e-7), n


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    data = rows(4, completions=[1, 2, 1, 3])  # 7 targets: the two micro-batches cannot hold as many
    runs = {}
    for name, (batch, accum) in {"big": (4, 1), "accumulated": (2, 2)}.items():
        reft = new_reft()
        grads = GradsBeforeStep(reft)
        trainer = ReftTrainer(reft, make_args(tmp_path / name, max_steps=1, max_grad_norm=0.0,
                                              per_device_train_batch_size=batch, gradient_accumulation_steps=accum),
                              train_dataset=data, callbacks=[grads])
        trainer.train()
        runs[name] = (grads.grads[0], losses(trainer)[0])
    (big, big_loss), (acc, acc_loss) = runs["big"], runs["accumulated"]
    for n in big:
        assert torch.allclose(acc[n], big[n], rtol=1e-5, atol=1e-7), n
    assert acc_loss == pytest.approx(big_loss, rel=1e-6)


def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    runs, attention_calls = [], []
    for checkpointing in (False, True):
        reft = new_reft()
        grads = GradsBeforeStep(reft)
        calls = []  # a checkpointed block after the edit reruns its attention in backward
        reft.model.model.layers[2].self_attn.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        trainer = ReftTrainer(reft, make_args(tmp_path / str(checkpointing), max_steps=1,
                                              activation_checkpointing=checkpointing or None),
                              train_dataset=rows(4), callbacks=[grads])
        trainer.train()
        runs.append(grads.grads[0])
        attention_calls.append(len(calls))
    assert attention_calls == [1, 2]  # one micro-batch; run twice with checkpointing
    for n in runs[0]:
        assert torch.equal(runs[1][n], runs[0][n]), n


def test_a_cpu_run_turns_pin_memory_off_without_a_warning_and_leaves_the_callers_args(tmp_path):
    """TrainingArguments pins memory by default; on a CPU torch's DataLoader warned that it is
    unused once per epoch (twice in the README's example). ReftTrainer turns it off in a copy."""
    import warnings

    args = make_args(tmp_path, use_cpu=False, max_steps=4)  # the default device (use_cpu=True unpins)
    if args.device.type != "cpu":
        pytest.skip(f"the default device is {args.device}, where pinned memory is used")
    assert args.dataloader_pin_memory, "TrainingArguments' default changed: this test shows nothing"
    trainer = ReftTrainer(new_reft(), args, train_dataset=rows(4))  # 4 steps of 2 rows: two epochs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [str(w.message) for w in caught if "pin_memory" in str(w.message)]
    assert args.dataloader_pin_memory and not trainer.args.dataloader_pin_memory


def test_collator_names_the_fix_when_prompt_length_is_dropped():
    row = {k: v for k, v in rows(1)[0].items() if k != "prompt_length"}
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        ReftDataCollator()([row])
