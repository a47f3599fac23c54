"""What a training run records, and where it goes: nothing is lost.

    TrainResult   what a run did: the loss and lr of every optimizer step, the evaluations
    TrainLog      the record as the run goes: losses kept on the device until read (one read
                  for many steps), the tqdm bar and the log lines on stderr, train_log.json's
                  contents
    RunFolder     the adapter folder: staged beside output_dir while the run goes (checkpoints
                  every save_every steps), renamed into output_dir when it ends well
                  (minireft.io.publish), kept as a sibling <output_dir>.partial-<UTC time> with
                  the last completed step when it stops (minireft.io.keep_partial); output_dir
                  itself is never touched by a run that stops
    write_loss_plot   loss.png: the loss of every step and the held-out losses

A finished folder holds the adapter (reft_config.json, reft_model.safetensors), train_log.json
(the settings, the loss and lr of every step, the evaluations, how the run ended) and
loss.png when matplotlib is installed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minireft import io
from minireft.hf.recipe import LOG_FILE, PLOT_FILE


@dataclass
class TrainResult:
    """What a run did. losses[t] and lrs[t] belong to optimizer step t; evals holds one
    record {"step", "epoch", "loss", …} per evaluation."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    steps: int = 0
    total_steps: int = 0
    epochs: int = 0
    targets: int = 0  # supervised completion tokens (lm) or examples (classification) seen
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class TrainLog:
    """A run's record as it goes: `result`, the losses of finished steps not yet read from the
    device (read together: one sync for many steps), the tqdm bar (loss and lr in its postfix)
    and the log lines on stderr (every `log_every` steps, and every evaluation).

    progress: show the bar; log_every: None logs no step lines. Either makes evaluations log."""

    def __init__(self, result: TrainResult, settings: dict, log_info: dict | None, *, progress: bool,
                 log_every: int | None):
        self.result = result
        self.settings, self.log_info = settings, log_info or {}
        self.pending: list[torch.Tensor] = []  # 0-d losses of finished steps, on the device
        self.log_every = log_every
        self.verbose = progress or bool(log_every)
        self.bar = tqdm(total=result.total_steps, desc="train", unit="step", disable=not progress,
                        dynamic_ncols=True, file=sys.stderr)
        self.start = time.perf_counter()

    def step(self, loss: torch.Tensor, lr: float, targets: int) -> None:
        """Step result.steps is done: its loss (0-d, left on the device), lr and targets."""
        self.result.lrs.append(lr)
        self.pending.append(loss.detach())
        self.result.targets += targets
        self.bar.update(1)

    def read_losses(self) -> None:
        """The pending losses into result.losses (one device read): the bar's postfix, the log lines."""
        if not self.pending:
            return
        first = len(self.result.losses) + 1
        self.result.losses.extend(torch.stack(self.pending).tolist())
        self.pending.clear()
        losses, lrs = self.result.losses[first - 1:], self.result.lrs[first - 1:]
        self.bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lrs[-1]:.2e}", refresh=True)
        for step, (loss, lr) in enumerate(zip(losses, lrs), start=first):
            if self.log_every and step % self.log_every == 0:
                self.write(f"step {step}/{self.result.total_steps} loss {loss:.4f} lr {lr:.3e}")

    def add_eval(self, record: dict) -> None:
        self.result.evals.append(record)
        self.write("eval " + " ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def to_json(self, stopped: dict | None = None) -> dict:
        """train_log.json so far: the settings, log_info, every field of result, and `stopped`
        ({"step", "error"} for a run that stopped, else None). Reads the pending losses."""
        self.read_losses()
        self.result.seconds = self.elapsed()
        return {"settings": self.settings, **self.log_info, **self.result.to_dict(), "stopped": stopped}

    def stopped(self, exc: BaseException, folder: RunFolder | None, model) -> None:
        """After a failure: the losses read if the device still answers, and with a folder the
        last completed step kept in a partial folder (RunFolder.stop), a note added to exc."""
        with contextlib.suppress(Exception):  # a failed device cannot be read: keep the error
            self.read_losses()
        if folder is not None:
            self.close()
            folder.stop(model, self.result, exc, self.to_json)

    def write(self, line: str) -> None:
        if self.verbose:
            tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class RunFolder:
    """A run's adapter folder: staged beside `path` while training runs, renamed into `path`
    when it ends well, kept as a sibling partial folder when it stops (module minireft.io).
    An adapter already at `path` is refused at once unless overwrite (io.check_output)."""

    def __init__(self, path, overwrite: bool):
        self.path = Path(path)
        io.check_output(self.path, overwrite=overwrite)
        self.staging: Path | None = None
        self.saved_step = 0

    def start(self) -> None:
        self.staging = io.staging_dir(self.path)

    def save(self, model, step: int, log: dict) -> None:
        """The adapter of `step` and the log so far, into the staging folder (a checkpoint)."""
        model.save_pretrained(self.staging)  # replaces the folder: the log is written after it
        self.saved_step = step
        _write_json(self.staging / LOG_FILE, log)

    def finish(self, model, result: TrainResult, log: dict) -> None:
        """The last step's adapter, train_log.json and loss.png, then the folder into `path`."""
        if self.saved_step != result.steps:
            model.save_pretrained(self.staging)
        _write_json(self.staging / LOG_FILE, log)
        write_loss_plot(self.staging / PLOT_FILE, result)
        io.publish(self.staging, self.path)

    def stop(self, model, result: TrainResult, exc: BaseException, to_json) -> None:
        """After a failure: keep the last completed step in a partial folder, never touch
        self.path, and add one note to `exc` that says where the step went. to_json(stopped)
        gives train_log.json (TrainLog.to_json)."""
        where = f"training stopped after step {result.steps} of {result.total_steps}"
        untouched = f"{self.path} is untouched"
        if self.staging is None or result.steps == 0:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
            _add_note(exc, f"{where}: nothing to keep; {untouched}")
            return
        try:
            if self.saved_step != result.steps:
                model.save_pretrained(self.staging)
            _write_json(self.staging / LOG_FILE,
                        to_json({"step": result.steps, "error": f"{type(exc).__name__}: {exc}"}))
            partial = io.keep_partial(self.staging, self.path)
        except (OSError, ValueError, RuntimeError) as error:  # a full disk, say: keep the original error
            shutil.rmtree(self.staging, ignore_errors=True)
            _add_note(exc, f"{where}; saving that step failed ({type(error).__name__}: {error}); "
                           f"{untouched}")
            return
        _add_note(exc, f"{where}; its adapter is in {partial}; {untouched}")


def _add_note(exc: BaseException, note: str) -> None:
    """exc.add_note (Python >= 3.11; the traceback prints it), or the same __notes__ list on 3.10."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_loss_plot(path, result: TrainResult) -> bool:
    """loss.png: the training loss of every step, and the held-out losses (points), against
    the optimizer step. Skipped (returns False) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    figure = Figure(figsize=(6, 3.5), dpi=100)  # no pyplot: no global state, no display needed
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(range(1, len(result.losses) + 1), result.losses, label="train (per step)", linewidth=1)
    evals = [(e["step"], e["loss"]) for e in result.evals if isinstance(e.get("loss"), float)]
    if evals:
        ax.plot(*zip(*evals), "o", label="held out")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean loss per target")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    figure.savefig(path)
    return True
