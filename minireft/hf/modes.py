"""The modes a ReFT model runs in: training the edit over a frozen base, and evaluating.

    training     the interventions (and a classifier's head) in train mode, so intervention
                 dropout draws; the base model in eval mode, so its own dropout is off: the
                 base is frozen, and ReFT's loss is that of the model as it will be served
    evaluation   every module in eval mode

Both record every submodule's `training` flag first and put it back after, so the caller's
model leaves as it came (a model in eval mode stays there after train() or an evaluation).
"""

from __future__ import annotations

import contextlib

from minireft.hf.loss import base_model

_CHECKPOINTING = "gradient_checkpointing"  # the enter_train_mode record key of its ReftModel


def enter_train_mode(model, gradient_checkpointing: bool = False) -> dict:
    """Interventions (and head) in train mode, the base model in eval mode (its dropout off).
    With gradient_checkpointing, ReftModel.gradient_checkpointing_enable(). Returns what
    `restore_modes` needs to put every submodule's mode (and checkpointing) back."""
    reft_model = getattr(model, "reft_model", model)
    was_on = any(getattr(m, "gradient_checkpointing", False) is True for m in base_model(model).modules())
    if gradient_checkpointing:  # first: a model without checkpointing raises before any change
        reft_model.gradient_checkpointing_enable()
    before = {m: m.training for m in model.modules()}
    model.train()
    base_model(model).eval()
    if gradient_checkpointing:
        for module in base_model(model).modules():  # HF checkpoints a block in training mode only:
            if getattr(module, "gradient_checkpointing", False) is True:  # the block's own flag,
                module.training = True  # not its submodules' (their dropout stays off)
        return before if was_on else {**before, _CHECKPOINTING: reft_model}
    return before


def restore_modes(before: dict) -> None:
    """Every submodule's mode as `before` (enter_train_mode's record) holds it; checkpointing
    off again if enter_train_mode turned it on."""
    reft_model = before.pop(_CHECKPOINTING, None)
    if reft_model is not None:
        reft_model.gradient_checkpointing_disable()
    for module, training in before.items():
        module.training = training


@contextlib.contextmanager
def eval_mode(model):
    """Every module of `model` in eval mode inside the block (no dropout anywhere); each
    submodule's mode comes back after."""
    before = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        restore_modes(before)
