"""Training defaults, in one place: train() takes its defaults from TRAIN, and the CLI shows
and passes the same values. No torch here, so `minireft train --help` needs none.

The schedule a run gets with these defaults, for n examples and S = batch_size · grad_accum
examples per optimizer step:

    steps per epoch  E = ⌈n / S⌉
    epochs           epochs if given, else ⌈min_steps / E⌉     (whole epochs: every example
                                                                 is seen equally often)
    total steps      T = epochs · E, capped at max_steps when given
                     (max_steps alone, epochs unset: epochs = ⌈max_steps / E⌉, T = max_steps)

so a small data set still gets at least min_steps optimizer steps, and a large one one
epoch. A run of fewer than FEW_STEPS steps warns that it may learn little.

The layers of the CLI's default intervention follow the model's depth (default_layers);
rank and positions are ReftConfig's own field defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainDefaults:
    """The default of every tuning argument of minireft.hf.training.train.

    epochs:       None: enough whole epochs for at least min_steps optimizer steps
    min_steps:    the fewest optimizer steps a run with epochs=None takes
    batch_size:   examples per micro-batch
    grad_accum:   micro-batches per optimizer step
    lr:           peak learning rate (linear warmup, then linear decay)
    weight_decay: AdamW decay on W, b (never on R)
    warmup_ratio: warmup steps w = ⌈warmup_ratio · T⌉; step t = 1..w runs at lr · t / w
    seed:         seeds the shuffling, the intervention dropout and the init
    max_length:   tokens per example
    chat_template: None: wrap prompts in the tokenizer's chat template when it has one ("lm"
                  tasks; measured on the format task, results/README.md), else raw prompts
    """

    epochs: int | None = None
    min_steps: int = 64
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 4e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    seed: int = 0
    max_length: int = 512
    chat_template: bool | None = None


TRAIN = TrainDefaults()

# What a run with an output folder writes beside the adapter.
LOG_FILE = "train_log.json"  # the settings, the loss and lr of every step, the evaluations
PLOT_FILE = "loss.png"  # the loss curve, when matplotlib is installed

# A run with fewer optimizer steps than this warns (one line): with a linear warmup and
# decay, a handful of steps barely moves the adapter away from its initialisation.
FEW_STEPS = 20

# The default blocks as fractions of the model's depth n: block round(f · n) for each f
# (4 and 8 of SmolLM2's 30 blocks, the layers of the run that learned a new output
# format from 32 examples).
LAYER_FRACTIONS = (4 / 30, 8 / 30)


def default_layers(num_layers: int) -> tuple[int, ...]:
    """Blocks {min(n − 1, round(f · n)) : f ∈ LAYER_FRACTIONS} of a model with n blocks, sorted."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    return tuple(sorted({min(num_layers - 1, round(f * num_layers)) for f in LAYER_FRACTIONS}))


def schedule(n_examples: int, *, batch_size: int, grad_accum: int, epochs: int | None,
             min_steps: int, max_steps: int | None) -> tuple[int, int, int]:
    """(epochs, steps per epoch E, total optimizer steps T) as the module docstring defines them."""
    per_epoch = -(-n_examples // (batch_size * grad_accum))
    if epochs is None:
        want = max_steps if max_steps is not None else min_steps
        epochs = max(1, -(-want // per_epoch))
    total = epochs * per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    return epochs, per_epoch, total
