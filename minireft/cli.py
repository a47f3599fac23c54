"""The `minireft` command: `minireft check --backend MODULE`, `minireft train`, `minireft generate`,
`minireft demo`, `minireft convert --from/--to pyreft`.

Each subcommand is a pair of small functions registered once, in SUBCOMMANDS:
`_add_<name>(subparsers)` declares its arguments and returns its parser, and
`_run_<name>(args)` runs it and returns the exit status. A subcommand that needs
torch imports it inside its `_run_` function, so `minireft check --backend minireft`
runs on a NumPy-only install.

Exit status: 0 success, 1 a check failed or a training run stopped (a non-finite loss, an
error mid-run: its last completed step is kept in <output>.partial-<time>), 2 a usage error
(bad arguments, a backend that cannot be imported, a filter that matches no case, unreadable
data, model or adapter, an --output that holds an adapter without --overwrite), 130
interrupted (Ctrl-C; training keeps its last completed step as a failure does). Errors and
warnings are one line each on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
import warnings

from minireft import SPEC_VERSION, __version__

# ---------------------------------------------------------------------------- check


def _add_check(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "check",
        help="run the conformance corpus against a backend",
        description="Run every case of the conformance corpus (shipped with minireft) against a "
                    "backend in float64 and float32, and print case, worst absolute and "
                    "relative error, tolerance and verdict. Exit status 1 when a case fails.",
    )
    p.add_argument("--backend", required=True, metavar="MODULE",
                   help="the backend: an importable module (minireft, minireft.torch, mypkg.reft), "
                        "MODULE:ATTRIBUTE for an object inside one, or a path to a .py file")
    p.add_argument("--dtype", choices=("float64", "float32", "both"), default="both",
                   help="the dtype(s) to run every case in (default: both)")
    p.add_argument("--filter", action="append", default=[], metavar="SUBSTR",
                   help="run only the cases whose name contains SUBSTR (repeatable: any of them)")
    p.add_argument("--xfail", metavar="FILE",
                   help="known gaps, one per line: CASE_GLOB [float32|float64]  # reason; "
                        "a listed case that fails is XFAIL and does not fail the run")
    p.add_argument("--cases", metavar="DIR",
                   help="the corpus folder (default: the one installed with minireft, else reference/cases)")
    p.add_argument("--adapter", choices=("auto", "numpy", "torch"), default="auto",
                   help="how arrays reach the backend (default: the backend's to_backend / "
                        "to_numpy, else torch tensors if it uses torch, else NumPy arrays)")
    p.add_argument("--device", help="put the torch adapter's tensors on this device (e.g. cuda)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="list only the checks that did not pass, then the summary")
    return p


def _run_check(args) -> int:
    from minireft import conformance

    if os.getcwd() not in sys.path:  # a backend module in the current folder, as `python -m` finds it
        sys.path.insert(0, os.getcwd())
    dtypes = conformance.DTYPES if args.dtype == "both" else (args.dtype,)
    try:
        report = conformance.run(args.backend, cases_dir=args.cases, dtypes=dtypes,
                                 filters=args.filter, xfail=args.xfail or (),
                                 adapter=args.adapter, device=args.device)
    except (ImportError, AttributeError, OSError, LookupError, ValueError) as exc:
        print(f"minireft check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(conformance.format_report(report, only_problems=args.quiet))
    return 1 if report.failed else 0


# ---------------------------------------------------------------------------- train


def _layer_list(text: str) -> list[int]:
    """"8" → [8]; "4,8" → [4, 8] (also repeatable: --layers 4 8)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be integers such as 8 or 4,8, got {text!r}") from None


def _add_model_args(p) -> None:
    p.add_argument("--model", required=True, metavar="PATH_OR_NAME",
                   help="the base model: a local Hugging Face folder, a .gguf file (or a folder "
                        "holding one; converted once and cached), a hub name already in the local "
                        "Hugging Face cache, or 'smollm2' (the packaged SmolLM2-135M-Instruct); "
                        "nothing is downloaded")
    p.add_argument("--model-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="the base model's dtype (the adapter stays float32; default float32)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Show every warning raised inside as one line on stderr: "minireft <command>: warning: …"."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"minireft {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():  # restores showwarning on the way out
        warnings.showwarning = show
        yield


def _one_line(command: str, exc: BaseException) -> str:
    """"minireft <command>: <Type>: <message>[; <train()'s note>]" on one line."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    notes = "; ".join(getattr(exc, "__notes__", []))
    return " ".join(f"minireft {command}: {text}{'; ' + notes if notes else ''}".split())


def _run_stopped(exc: BaseException) -> bool:
    """True when train() stopped mid-run (it noted where the last step went), False for an
    error before training started (a usage error)."""
    return any(n.startswith("training stopped") for n in getattr(exc, "__notes__", []))


# What a subcommand may raise for bad input or a failed run: shown as one line, no traceback.
ERRORS = (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError, FloatingPointError)


def _one_line_errors(command: str):
    """Decorator for a _run_X: its warnings print as one line each, and it ends with an exit
    code and at most one line on stderr: 130 on Ctrl-C ("interrupted", or train()'s note of
    where the last step went), 1 for a run that train() stopped mid-way, 2 for an error before
    any work (bad input), else what the subcommand returns."""
    def wrap(run):
        @functools.wraps(run)
        def wrapped(args) -> int:
            with _warnings_as_lines(command):
                try:
                    return run(args)
                except KeyboardInterrupt as exc:
                    noted = getattr(exc, "__notes__", None)
                    exc.args = exc.args or ("interrupted",)
                    print(_one_line(command, exc) if noted else f"minireft {command}: interrupted",
                          file=sys.stderr)
                    return 130
                except ERRORS as exc:
                    print(_one_line(command, exc), file=sys.stderr)
                    return 1 if _run_stopped(exc) else 2
        return wrapped
    return wrap


def _add_train(sub) -> argparse.ArgumentParser:
    from minireft.config import COMPONENTS, INITS, INTERVENTIONS, ReftConfig
    from minireft.hf.recipe import LAYER_FRACTIONS, LOG_FILE, PLOT_FILE, TRAIN, default_layers

    reft_default = {f.name: f.default for f in dataclasses.fields(ReftConfig)}
    fractions = ", ".join(f"{f:.3g}" for f in LAYER_FRACTIONS)
    of_30 = ",".join(map(str, default_layers(30)))
    p = sub.add_parser(
        "train",
        help="train a ReFT adapter on a JSONL file",
        description="Train a ReFT adapter on a frozen model. Language modelling (default): "
                    "each JSONL line is {\"prompt\": ..., \"completion\": ...} and the loss is on "
                    "completion tokens only. --task classification: each line is {\"text\" (or "
                    "\"prompt\"): ..., \"label\": int}, for an encoder, with a trained linear head. "
                    f"Writes the adapter, {LOG_FILE} and {PLOT_FILE} (with matplotlib) into a new "
                    "folder beside --output, moved into --output when training ends well; a run "
                    "that stops keeps its last step in <output>.partial-<time> and leaves --output "
                    "untouched. Every default below is the library's (minireft.hf.recipe.TRAIN, "
                    "ReftConfig).")
    _add_model_args(p)
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help="training examples")
    p.add_argument("--eval", metavar="FILE.jsonl", help="held-out examples, evaluated after every epoch")
    p.add_argument("--output", required=True, metavar="DIR", help="the adapter folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in --output")
    p.add_argument("--task", choices=("lm", "classification"), default="lm",
                   help="lm: loss on the completion tokens; classification: an encoder with a trained "
                        "linear head over {\"text\", \"label\"} lines (default %(default)s)")
    g = p.add_argument_group("the intervention")
    g.add_argument("--layers", type=_layer_list, nargs="+", metavar="L",
                   help="0-based block indices, e.g. 8 or 4,8 (default: block round(f·n) of an "
                        f"n-block model for f in {fractions}; {of_30} of 30)")
    g.add_argument("--rank", type=int, default=reft_default["rank"],
                   help="the subspace rank r (default %(default)s)")
    g.add_argument("--positions", default=reft_default["positions"],
                   help="edited prompt tokens: f<p>+l<s>, f<p> or l<s> (default %(default)s)")
    g.add_argument("--tied", action="store_true", help="one intervention for prefix and suffix positions")
    g.add_argument("--intervention", choices=tuple(INTERVENTIONS), default=reft_default["intervention"],
                   help="the edit: loreft h + Rᵀ(Wh + b − Rh) with orthonormal R, direft h + W2ᵀ(W1h + b), "
                        "or the rest of the family (default %(default)s)")
    g.add_argument("--init", choices=INITS, default=reft_default["init"],
                   help="paper: W and b drawn as nn.Linear's; identity: W = R, b = 0, so training starts "
                        "from the base model exactly (default %(default)s)")
    g.add_argument("--dropout", type=float, default=reft_default["dropout"],
                   help="dropout on the edit (default %(default)s)")
    g.add_argument("--component", choices=COMPONENTS, default=reft_default["component"],
                   help="whose output is edited in each block: the block's, or its attention or MLP "
                        "submodule's (default %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=TRAIN.epochs,
                   help="passes over the data (default: enough for at least --min-steps optimizer steps)")
    g.add_argument("--min-steps", type=int, default=TRAIN.min_steps,
                   help="the fewest optimizer steps when --epochs is not given (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=TRAIN.batch_size,
                   help="examples per micro-batch; under torchrun the global one, split across the "
                        "processes (default %(default)s)")
    g.add_argument("--grad-accum", type=int, default=TRAIN.grad_accum,
                   help="micro-batches per optimizer step (default %(default)s)")
    g.add_argument("--lr", type=float, default=TRAIN.lr,
                   help="peak learning rate, after a linear warmup, before a linear decay (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=TRAIN.weight_decay,
                   help="on W, b (never on R) (default %(default)s)")
    g.add_argument("--warmup-ratio", type=float, default=TRAIN.warmup_ratio,
                   help="the fraction of the steps over which the learning rate rises linearly to --lr "
                        "(default %(default)s)")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--max-length", type=int, default=TRAIN.max_length,
                   help="tokens per example (default %(default)s)")
    g.add_argument("--seed", type=int, default=TRAIN.seed,
                   help="seeds the intervention's init, the data order and dropout (default %(default)s)")
    g.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=TRAIN.chat_template,
                   help="wrap each prompt in the tokenizer's chat template (one user turn); default: on "
                        "when the tokenizer has one (language-model tasks); the adapter records it, so "
                        "generate and eval apply it too")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the base model's block activations in backward instead of keeping "
                        "them: the same gradients, less memory, a slower step")
    g = p.add_argument_group("classification")
    g.add_argument("--num-labels", type=int, help="classes (default: the largest label + 1)")
    g.add_argument("--pooling", choices=("first", "mean"), default="first",
                   help="the head reads the first token ([CLS]) or the mean of the tokens")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--save-every", type=int, help="also save a checkpoint every N steps")
    g.add_argument("--log-every", type=int, help="print the loss every N steps")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _device(name: str):
    import torch

    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        "cpu" if name == "auto" else name)


def _load_base(args, task: str):
    """(model, tokenizer) on args.device: a causal LM through minireft.hf.loading, or an encoder."""
    import torch

    dtype = getattr(torch, args.model_dtype)
    if getattr(args, "quiet", True):  # generate has no bar of its own; train --quiet asks for none
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if task == "lm":
        from minireft.hf.loading import load_model

        model, tokenizer = load_model(args.model, dtype=dtype)
    else:
        from transformers import AutoModel, AutoTokenizer

        from minireft.hf.loading import resolve_model

        kind, source = resolve_model(args.model)  # a missing path: the path checked, in one line
        if kind not in ("folder", "hub"):
            raise ValueError(f"--task classification needs an encoder's Hugging Face folder; "
                             f"--model {args.model} is a GGUF causal LM")
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        model = AutoModel.from_pretrained(str(source), local_files_only=True, dtype=dtype).eval()
    return model.to(_device(args.device)), tokenizer


def _read_examples(path, task: str) -> list[dict]:
    from minireft.hf.jsonl import read_jsonl

    # read_jsonl requires string values; a classification line's label is an int, and the
    # "text" / "prompt" alternative is checked per example by minireft.hf.data.
    return read_jsonl(path, required=("prompt", "completion") if task == "lm" else ())


def config_from_args(args, num_layers: int | None):
    """The ReftConfig of the flags (validated); --layers defaults to the recipe's blocks of a
    num_layers-block model. None when that default is needed but the depth is unknown."""
    from minireft import ReftConfig
    from minireft.hf.recipe import default_layers

    if args.layers is not None:
        layers = sorted({x for group in args.layers for x in group})
    elif num_layers is not None:
        layers = default_layers(num_layers)
    else:
        return None
    return ReftConfig(layers=layers, rank=args.rank, positions=args.positions, tied=args.tied,
                      intervention=args.intervention, init=args.init, dropout=args.dropout,
                      component=args.component)


def _dims_of(model) -> tuple[int, int]:
    from minireft.hf.blocks import find_blocks, hidden_size_of

    return len(find_blocks(model)[1]), hidden_size_of(model)


def _build_model(args, config, model, train_examples):
    """attach(model, config), wrapped in a ReftClassifier for classification."""
    from minireft.hf.model import attach

    reft_model = attach(model, config, seed=args.seed)
    if args.task == "lm":
        return reft_model
    from minireft.hf.classify import ReftClassifier

    # a missing or bad label is reported, with its example's index, when train() encodes the data
    labels = [ex.get("label") for ex in train_examples]
    num_labels = args.num_labels or max(2, 1 + max((x for x in labels if isinstance(x, int)), default=1))
    return ReftClassifier(reft_model, num_labels, pooling=args.pooling, seed=args.seed)


@_one_line_errors("train")
def _run_train(args) -> int:
    """Under torchrun (WORLD_SIZE > 1) every process runs this; the process group starts here
    (minireft.hf.distributed.init_from_env) and only rank 0 writes and prints."""
    from minireft import io

    # everything that can be checked without the weights, before they load
    io.check_output(args.output, overwrite=args.overwrite)
    train_examples = _read_examples(args.data, args.task)
    eval_examples = _read_examples(args.eval, args.task) if args.eval else None
    from minireft.hf import distributed, preflight, training

    started = distributed.init_from_env(cuda=_device(args.device).type == "cuda")
    try:
        rank = distributed.rank_and_world()[0]
        dims = preflight.model_dims(args.model)
        config = config_from_args(args, dims[0] if dims else None)
        if config is not None:
            preflight.check_fits(config, dims, args.model)
        model, tokenizer = _load_base(args, args.task)
        config = config or config_from_args(args, _dims_of(model)[0])
        reft_model = _build_model(args, config, model, train_examples)
        result = training.train(
            reft_model, tokenizer, train_examples, eval_examples=eval_examples, task=args.task,
            epochs=args.epochs, min_steps=args.min_steps, batch_size=args.batch_size,
            grad_accum=args.grad_accum, lr=args.lr, weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio, seed=args.seed, chat_template=args.chat_template,
            max_length=min(args.max_length, tokenizer.model_max_length), max_steps=args.max_steps,
            progress=not args.quiet, log_every=args.log_every, output_dir=args.output,
            overwrite=args.overwrite, save_every=args.save_every,
            gradient_checkpointing=args.gradient_checkpointing,
            log_info={"args": {k: v for k, v in vars(args).items() if k != "func"}})
    finally:
        if started:
            distributed.destroy()
    if rank == 0:
        print(_train_summary(reft_model, result, args.output))
    return 0


def _train_summary(reft_model, result, output) -> str:
    losses = result.losses
    line = (f"trained {reft_model.num_trainable_parameters()} parameters for {result.steps} steps in "
            f"{result.seconds:.1f} s: loss {losses[0]:.4f} → {losses[-1]:.4f}")
    if result.evals:
        last = result.evals[-1]
        line += "; eval " + ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "accuracy") if k in last)
    return f"{line}\nadapter saved to {output}"


# ---------------------------------------------------------------------------- generate


def _add_generate(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate",
        help="complete a prompt with a trained adapter",
        description="Load the base model, attach the adapter from --adapter and print the "
                    "completion of --prompt (the new text only). Greedy unless --sample. The "
                    "prompt is built as the adapter's training prompts were (chat template or "
                    "not, recorded in the adapter).")
    _add_model_args(p)
    p.add_argument("--adapter", required=True, metavar="DIR", help="a folder written by `minireft train`")
    p.add_argument("--prompt", required=True,
                   help="the prompt (the user message); an empty or blank one is refused, as train and "
                        "eval refuse one: ReFT edits prompt tokens")
    p.add_argument("--max-new-tokens", type=int, default=128,
                   help="the most tokens to generate (default %(default)s)")
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the chat template (default: as the adapter was trained)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="with --sample: divide the logits by this before sampling (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed")
    return p


def _load_lm_adapter(args, needs: str):
    """(ReftModel, tokenizer) for --model with the language-modelling adapter --adapter: the
    folder is checked against the model's config before the weights load, and the adapter's
    prompt format is restored (with a warning when this tokenizer's template differs, unless
    --chat-template/--no-chat-template decides)."""
    from pathlib import Path

    from minireft.hf import preflight
    from minireft.hf.classify import HEAD_FILE

    preflight.check_adapter(args.adapter, preflight.model_dims(args.model), args.model)
    if (Path(args.adapter) / HEAD_FILE).is_file():
        raise ValueError(f"{args.adapter} holds a classifier (it has {HEAD_FILE}); {needs} a "
                         "language-modelling adapter")
    from minireft.hf.model import ReftModel

    model, tokenizer = _load_base(args, "lm")
    reft_model = ReftModel.from_pretrained(
        model, args.adapter, tokenizer=tokenizer if args.chat_template is None else None)
    return reft_model, tokenizer


@_one_line_errors("generate")
def _run_generate(args) -> int:
    # checked before anything loads: an empty prompt has no tokens for the edit (raw, it is no
    # tokens at all on a tokenizer that adds no BOS), and train refuses one the same way
    if not args.prompt.strip():
        raise ValueError("--prompt is empty; ReFT edits prompt tokens, so it needs a prompt: pass the "
                         "text to complete, e.g. --prompt \"Encode the word: flower\"")
    if args.max_new_tokens < 1 or args.temperature <= 0:
        raise ValueError(f"--max-new-tokens must be >= 1 and --temperature > 0, got {args.max_new_tokens} "
                         f"and {args.temperature}")
    reft_model, tokenizer = _load_lm_adapter(args, "generate needs")
    from minireft.hf.generation import generate_text

    print(generate_text(reft_model, tokenizer, args.prompt, chat_template=args.chat_template,
                        max_new_tokens=args.max_new_tokens, sample=args.sample,
                        temperature=args.temperature, seed=args.seed))
    return 0


# ---------------------------------------------------------------------------- demo


def _add_demo(sub) -> argparse.ArgumentParser:
    from minireft.demo.defaults import DEFAULT_OUTPUT_DIR, DEFAULTS

    p = sub.add_parser(
        "demo",
        help="train LoReFT on SmolLM2-135M for review sentiment, offline, in minutes on a CPU",
        description="Load SmolLM2-135M-Instruct (packaged, offline), measure its zero-shot accuracy "
                    "on held-out Rotten Tomatoes reviews (positive/negative), train a LoReFT adapter "
                    "on a few hundred reviews, measure again, show a few generations, save the "
                    "adapter and print a summary table.")
    p.add_argument("--output", default=DEFAULT_OUTPUT_DIR, metavar="DIR",
                   help="the adapter folder to write (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in --output")
    p.add_argument("--n-train", type=int, default=DEFAULTS["n_train"], help="training reviews (default %(default)s)")
    p.add_argument("--n-eval", type=int, default=DEFAULTS["n_eval"], help="held-out reviews (default %(default)s)")
    p.add_argument("--layers", type=_layer_list, default=list(DEFAULTS["layers"]), metavar="L",
                   help=f"0-based blocks, e.g. 14,20 (default {','.join(map(str, DEFAULTS['layers']))})")
    p.add_argument("--rank", type=int, default=DEFAULTS["rank"],
                   help="the LoReFT subspace rank r (default %(default)s)")
    p.add_argument("--positions", default=DEFAULTS["positions"],
                   help="edited prompt tokens: f<p>+l<s>, f<p> or l<s> (default %(default)s)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"],
                   help="passes over the training reviews (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                   help="reviews per optimizer step (default %(default)s)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"],
                   help="peak learning rate, after a linear warmup (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the sample of reviews, the init and the data order (default %(default)s)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


@_one_line_errors("demo")
def _run_demo(args) -> int:
    from minireft import io

    io.check_output(args.output, overwrite=args.overwrite)
    from minireft.demo.demo import run_demo

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    run_demo(args.output, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed,
             layers=args.layers, rank=args.rank, positions=args.positions, epochs=args.epochs,
             batch_size=args.batch_size, lr=args.lr, threads=args.threads,
             progress=not args.quiet, overwrite=args.overwrite)
    return 0


# ---------------------------------------------------------------------------- eval


def _add_eval(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="score an adapter on a JSONL file: loss, exact match, choice accuracy",
        description="Load the base model, attach the adapter from --adapter and print, over the "
                    "rows of --data ({\"prompt\", \"completion\"} per line): the mean loss of "
                    "the completion tokens; exact match of greedy generations against the "
                    "completions (whitespace normalised: stripped, inner runs one space; case kept); "
                    "and, for rows with a \"choices\" list, accuracy by the summed log-probability "
                    "of each choice's tokens after the prompt (not length-normalised; the right one "
                    "is the completion, or choices[label]). --baseline scores the bare model the "
                    "same way, side by side.")
    _add_model_args(p)
    p.add_argument("--adapter", required=True, metavar="DIR", help="a folder written by `minireft train`")
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help="the rows to score")
    p.add_argument("--baseline", action="store_true", help="also score the bare model (same prompts)")
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap prompts in the chat template (default: as the adapter was trained)")
    p.add_argument("--max-new-tokens", type=int,
                   help="greedy generation length (default: the longest completion's tokens + 8)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward (default 8)")
    p.add_argument("--no-generate", action="store_true", help="skip generation (loss and choices only)")
    p.add_argument("--show", type=int, default=3, metavar="N",
                   help="print the first N prompts with their generations (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write every number and generation as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _eval_rows(path) -> list[dict]:
    """The JSONL rows, checked before any model loads, each error naming file:line: a prompt
    that is not blank, and each "choices" row by the rule score_choices applies (choice_index:
    a "label" inside the choices, else a completion among them)."""
    from minireft.hf.evaluation import choice_index
    from minireft.hf.jsonl import line_numbers, read_jsonl

    rows = read_jsonl(path)
    for lineno, row in zip(line_numbers(path), rows):
        if not row["prompt"].strip():
            raise ValueError(f"{path}:{lineno}: the prompt is empty; ReFT edits prompt tokens, so every "
                             "row needs one")
        if "choices" in row:
            choice_index(row, where=f"{path}:{lineno}")
    return rows


@_one_line_errors("eval")
def _run_eval(args) -> int:
    from pathlib import Path

    if args.batch_size < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise ValueError("--batch-size and --max-new-tokens must be >= 1")
    rows = _eval_rows(args.data)
    reft_model, tokenizer = _load_lm_adapter(args, "eval scores")
    from minireft.hf import evaluation

    fmt = getattr(reft_model, "prompt_format", None)
    chat = args.chat_template if args.chat_template is not None else bool(fmt and fmt.chat_template)
    kwargs = {"chat_template": chat, "max_new_tokens": args.max_new_tokens,
              "batch_size": args.batch_size, "generate": not args.no_generate,
              "progress": not args.quiet}
    results = {"adapter": evaluation.evaluate(reft_model, tokenizer, rows, **kwargs)}
    if args.baseline:
        base = reft_model.detach()  # the bare model, exactly as loaded
        results["base"] = evaluation.evaluate(base, tokenizer, rows, **kwargs)
    source = ("flag" if args.chat_template is not None else "the adapter's record" if fmt is not None
              else "the adapter records no prompt format; --chat-template if it was trained with one")
    print(f"{args.data}: {len(rows)} rows; chat template {'on' if chat else 'off'} ({source})")
    print(_eval_table(results))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"chat_template": chat, **results}, indent=2) + "\n")
    for i, row in enumerate(rows[:max(0, args.show)] if not args.no_generate else []):
        print(f"[{i}] {row['prompt']!r}\n    want {row['completion']!r}"
              + "".join(f"\n    {name:<7} {r['generations'][i]!r}" for name, r in results.items()))
    return 0


def _eval_table(results: dict) -> str:
    """One column per evaluated model: loss, exact match (k/n), choice accuracy (k/n)."""
    def cell(r, key, n_key):
        if key not in r:
            return "-"
        return f"{r[key]:.4f}" if n_key is None else f"{r[key]:.3f} ({round(r[key] * r[n_key])}/{r[n_key]})"

    names = list(results)
    lines = [f"{'':<16}" + "".join(f"{n:>18}" for n in names)]
    for label, key, n_key in (("loss", "loss", None), ("exact match", "exact_match", "n"),
                              ("choice accuracy", "choice_accuracy", "choice_n")):
        if any(key in r for r in results.values()):
            lines.append(f"{label:<16}" + "".join(f"{cell(results[n], key, n_key):>18}" for n in names))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- registry

# ---------------------------------------------------------------------------- convert


def _add_convert(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert",
        help="convert an adapter from or to pyreft 0.1.0's folder format",
        description="--from pyreft SRC: read a folder written by pyreft's ReftModel.save (its "
                    "config.json and intkey_*.bin files) and write a minireft adapter that edits "
                    "the tokens pyreft edits (position_rule pyreft); pyreft does not record the "
                    "positions, so pass them with --positions. --to pyreft SRC: write the minireft "
                    "adapter SRC as a folder that pyreft.ReftModel.load reads. The prompt format (chat "
                    "template or raw prompts) travels both ways under an extra key of pyreft's "
                    "config.json, minireft_prompt_format, which pyreft ignores; a folder pyreft wrote "
                    "itself has none: give it with --chat-template/--no-chat-template. Needs torch.")
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="source_format", choices=("pyreft",), help="SRC is a pyreft folder")
    way.add_argument("--to", dest="target_format", choices=("pyreft",), help="write DST as a pyreft folder")
    p.add_argument("source", metavar="SRC", help="the folder to convert")
    p.add_argument("--output", required=True, metavar="DST", help="the folder to write")
    p.add_argument("--positions", metavar="POS",
                   help="with --from pyreft: the positions the adapter was trained with, e.g. f7+l7")
    p.add_argument("--overwrite", action="store_true",
                   help="with --from pyreft: replace a minireft adapter already at DST")
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="with --from pyreft: the adapter was trained on prompts wrapped in the chat "
                        "template (or, --no-chat-template, on raw prompts); recorded in DST so generate "
                        "and eval build prompts the same way (default: what SRC records, else nothing)")
    return p


@_one_line_errors("convert")
def _run_convert(args) -> int:
    from minireft import io
    from minireft.hf.prompt_format import PromptFormat, read_prompt_format
    from minireft.pyreft import CONFIG_FILE, read_pyreft, write_pyreft
    from minireft.pyreft import read_prompt_format as read_pyreft_prompt_format

    if args.source_format == "pyreft":
        if args.positions is None:
            raise ValueError("--positions is required with --from pyreft: pyreft's folder does not "
                             "record them; pass the ones it was trained with, e.g. --positions f7+l7")
        io.check_output(args.output, overwrite=args.overwrite)
        config, params = read_pyreft(args.source, args.positions)
        recorded = read_pyreft_prompt_format(args.source)
        fmt = PromptFormat.from_dict(recorded) if recorded is not None else None
        if args.chat_template is not None and (fmt is None or fmt.chat_template != args.chat_template):
            fmt = PromptFormat(args.chat_template)  # the template's hash is unknown: no tokenizer here
        io.save_adapter(args.output, config, params, prompt_format=fmt.to_dict() if fmt else None)
    else:
        if args.positions is not None or args.overwrite or args.chat_template is not None:
            raise ValueError("--positions, --overwrite and --chat-template apply to --from pyreft only; "
                             "--to pyreft writes a new folder and takes the positions and prompt format "
                             "from SRC")
        config, params = io.load_adapter(args.source)
        fmt = read_prompt_format(args.source)
        write_pyreft(args.output, config, params, prompt_format=fmt.to_dict() if fmt else None)
    groups = "tied" if config.tied else "untied"
    prompts = ("no prompt format recorded" if fmt is None else
               f"chat template {'on' if fmt.chat_template else 'off'}")
    print(f"wrote {args.output}: {config.intervention}, layers {list(config.layers)}, rank {config.rank}, "
          f"{groups}, positions {config.positions}, position_rule {config.position_rule}"
          + (f", component {config.component}" if config.component != "block_output" else "")
          + f", {prompts}")
    if fmt is None and args.source_format == "pyreft":
        print(f"{args.source}/{CONFIG_FILE} records no prompt format (pyreft keeps none): generate and "
              "eval will use raw prompts; if the adapter was trained on chat-templated prompts, convert "
              "again with --chat-template --overwrite", file=sys.stderr)
    if args.target_format == "pyreft":
        rule = ("the same rule" if config.position_rule == "pyreft" else
                "pyreft's rule, which differs from this adapter's for prompts shorter than 2p or 2s")
        print(f"pyreft does not store positions: feed it {config.positions} (get_intervention_locations "
              f"edits by {rule}); its loader rebuilds W and b in bfloat16", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- serve


def _add_serve(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="serve adapters on vLLM's OpenAI-compatible server (needs the serve extra)",
        description="Start vLLM's OpenAI-compatible server on the Hugging Face model folder M with "
                    "every adapter loaded; a request's \"model\" field names an adapter (or the base "
                    "model's name for the bare model), /v1/models lists them, and one batch mixes "
                    "them. Adapters, the model and the port are checked before vLLM starts. vLLM "
                    "pins its own transformers: install it with scripts/setup_serve.sh and run "
                    ".venv-serve/bin/minireft serve ...")
    p.add_argument("--model", required=True, metavar="M", help="the base model's Hugging Face folder")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="an adapter folder served under NAME; repeat for several")
    p.add_argument("--name", help="the bare model's name in requests (default: M's folder name)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on (default: %(default)s)")
    return p


@_one_line_errors("serve")
def _run_serve(args) -> int:
    from minireft.serve.server import run

    if not args.adapter:
        raise ValueError("give at least one --adapter NAME=DIR (plain vLLM serves the bare model)")
    run(args.model, args.adapter, host=args.host, port=args.port, name=args.name)
    return 0  # not reached: run() becomes the vLLM server


SUBCOMMANDS = {
    "check": (_add_check, _run_check),
    "train": (_add_train, _run_train),
    "generate": (_add_generate, _run_generate),
    "demo": (_add_demo, _run_demo),
    "eval": (_add_eval, _run_eval),
    "convert": (_add_convert, _run_convert),
    "serve": (_add_serve, _run_serve),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minireft",
        description="Representation Finetuning (ReFT): an executable NumPy spec, a PyTorch "
                    "mirror, a conformance corpus.")
    parser.add_argument("--version", action="version",
                        version=f"minireft {__version__} (spec {SPEC_VERSION})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, run in SUBCOMMANDS.values():
        add(sub).set_defaults(func=run)
    return parser


TORCH_COMMANDS = ("train", "generate", "demo", "eval")  # the subcommands that run a model


def needs_torch(command: str) -> str | None:
    """None when torch and transformers import; else the one-line error with the pip commands."""
    import importlib

    missing = []
    for module in ("torch", "transformers"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if not missing:
        return None
    return (f"minireft {command}: needs {' and '.join(missing)}, not installed; install with "
            f"`pip install 'minireft[torch]'` (without a GPU, first `pip install torch` from "
            f"PyTorch's CPU-only wheels, far smaller than the default CUDA build)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        problem = needs_torch(args.command) if args.command in TORCH_COMMANDS else None
        if problem:
            print(problem, file=sys.stderr)
            return 2
        return args.func(args)
    except KeyboardInterrupt:  # a subcommand that has no handler of its own
        print(f"minireft {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
