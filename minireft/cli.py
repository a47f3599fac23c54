"""The `minireft` command: `minireft check --backend MODULE`, `minireft train`, `minireft generate`,
`minireft demo`.

Each subcommand is a pair of small functions registered once, in SUBCOMMANDS:
`_add_<name>(subparsers)` declares its arguments and returns its parser, and
`_run_<name>(args)` runs it and returns the exit status. A subcommand that needs
torch imports it inside its `_run_` function, so `minireft check --backend minireft`
runs on a NumPy-only install.

Exit status: 0 success, 1 a check failed, 2 a usage error (bad arguments, a backend
that cannot be imported, a filter that matches no case, unreadable data or model),
130 training interrupted (the last completed step's adapter is saved).
"""

from __future__ import annotations

import argparse
import os
import sys

from minireft import SPEC_VERSION, __version__

# ---------------------------------------------------------------------------- check


def _add_check(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "check",
        help="run the conformance corpus against a backend",
        description="Run every case of the conformance corpus (reference/cases) against a "
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
    p.add_argument("--cases", metavar="DIR", help="the corpus folder (default: reference/cases)")
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

TRAIN_LOG = "train_log.json"  # written beside the adapter: the run's arguments and history


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


def _add_train(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a ReFT adapter on a JSONL file",
        description="Train a ReFT adapter on a frozen model. Language modelling (default): "
                    "each JSONL line is {\"prompt\": ..., \"completion\": ...} and the loss is on "
                    "completion tokens only. --task classification: each line is {\"text\" (or "
                    "\"prompt\"): ..., \"label\": int}, for an encoder, with a trained linear head. "
                    f"Writes the adapter and {TRAIN_LOG} to --output.")
    _add_model_args(p)
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help="training examples")
    p.add_argument("--eval", metavar="FILE.jsonl", help="held-out examples, evaluated after every epoch")
    p.add_argument("--output", required=True, metavar="DIR", help="the adapter folder to write")
    p.add_argument("--task", choices=("lm", "classification"), default="lm")
    g = p.add_argument_group("the intervention")
    g.add_argument("--layers", type=_layer_list, nargs="+", default=[[8]], metavar="L",
                   help="0-based block indices, e.g. 8 or 4,8 (default 8)")
    g.add_argument("--rank", type=int, default=4, help="the subspace rank r (default 4)")
    g.add_argument("--positions", default="f7+l7", help="edited prompt tokens: f<p>+l<s> (default f7+l7)")
    g.add_argument("--tied", action="store_true", help="one intervention for prefix and suffix positions")
    g.add_argument("--intervention", choices=("loreft", "direft"), default="loreft")
    g.add_argument("--init", choices=("paper", "identity"), default="paper")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout on the edit (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=4e-3)
    g.add_argument("--weight-decay", type=float, default=0.0, help="on W, b (never on R)")
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--max-length", type=int, default=512, help="tokens per example (default 512)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat-template", action="store_true",
                   help="wrap each prompt in the tokenizer's chat template (one user turn)")
    g = p.add_argument_group("classification")
    g.add_argument("--num-labels", type=int, help="classes (default: the largest label + 1)")
    g.add_argument("--pooling", choices=("first", "mean"), default="first",
                   help="the head reads the first token ([CLS]) or the mean of the tokens")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--save-every", type=int, help="also save the adapter every N steps")
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


def _check_output(path) -> None:
    """Refuse, before training, a --output that save_pretrained would refuse after it."""
    from pathlib import Path

    from minireft.io import CONFIG_FILE

    out = Path(path)
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / CONFIG_FILE).is_file()):
        raise FileExistsError(f"--output {out} exists and is not an adapter folder; choose a new folder")


def _read_examples(path, task: str) -> list[dict]:
    from minireft.hf.jsonl import read_jsonl

    # read_jsonl requires string values; a classification line's label is an int, and the
    # "text" / "prompt" alternative is checked per example by minireft.hf.data.
    return read_jsonl(path, required=("prompt", "completion") if task == "lm" else ())


def _build_model(args, model, train_examples):
    """attach(model, config), wrapped in a ReftClassifier for classification."""
    from minireft import ReftConfig
    from minireft.torch import attach

    config = ReftConfig(layers=sorted({x for group in args.layers for x in group}), rank=args.rank,
                        positions=args.positions, tied=args.tied, intervention=args.intervention,
                        init=args.init, dropout=args.dropout)
    reft_model = attach(model, config, seed=args.seed)
    if args.task == "lm":
        return reft_model
    from minireft.hf.classify import ReftClassifier

    # a missing or bad label is reported, with its example's index, when train() encodes the data
    labels = [ex.get("label") for ex in train_examples]
    num_labels = args.num_labels or max(2, 1 + max((x for x in labels if isinstance(x, int)), default=1))
    return ReftClassifier(reft_model, num_labels, pooling=args.pooling, seed=args.seed)


def _run_train(args) -> int:
    import json
    import time
    from pathlib import Path

    from minireft.hf import training

    started = time.time()
    try:
        _check_output(args.output)
        train_examples = _read_examples(args.data, args.task)
        eval_examples = _read_examples(args.eval, args.task) if args.eval else None
        model, tokenizer = _load_base(args, args.task)
        reft_model = _build_model(args, model, train_examples)
        result = training.train(
            reft_model, tokenizer, train_examples, eval_examples=eval_examples, task=args.task,
            epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
            weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, seed=args.seed,
            chat_template=args.chat_template, max_length=min(args.max_length, tokenizer.model_max_length),
            max_steps=args.max_steps, progress=not args.quiet, log_every=args.log_every,
            output_dir=args.output, save_every=args.save_every)
    except KeyboardInterrupt:
        config_file = Path(args.output) / "reft_config.json"
        saved = config_file.is_file() and config_file.stat().st_mtime >= started
        print("minireft train: interrupted; "
              + (f"the adapter of the last completed step is in {args.output}" if saved else
                 "no step had completed, nothing saved"), file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError, FloatingPointError) as exc:
        print(f"minireft train: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    log = {"args": {k: v for k, v in vars(args).items() if k != "func"}, **result.to_dict()}
    (Path(args.output) / TRAIN_LOG).write_text(json.dumps(log, indent=2) + "\n")
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
                    "completion of --prompt (the new text only). Greedy unless --sample.")
    _add_model_args(p)
    p.add_argument("--adapter", required=True, metavar="DIR", help="a folder written by `minireft train`")
    p.add_argument("--prompt", required=True, help="the prompt (the user message)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the chat template (default: as the adapter was trained)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="the sampling seed")
    return p


def _trained_with_chat_template(adapter) -> bool:
    """What `minireft train` used for this adapter (its train_log.json), else False."""
    import json
    from pathlib import Path

    try:
        return bool(json.loads((Path(adapter) / TRAIN_LOG).read_text())["args"]["chat_template"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _run_generate(args) -> int:
    from pathlib import Path

    from minireft.hf.classify import HEAD_FILE
    from minireft.hf.generation import generate_text
    from minireft.hf.model import ReftModel

    chat = args.chat_template if args.chat_template is not None else _trained_with_chat_template(args.adapter)
    try:
        if (Path(args.adapter) / HEAD_FILE).is_file():
            raise ValueError(f"{args.adapter} holds a classifier (it has {HEAD_FILE}); generate needs a "
                             "language-modelling adapter")
        model, tokenizer = _load_base(args, "lm")
        reft_model = ReftModel.from_pretrained(model, args.adapter)
        text = generate_text(reft_model, tokenizer, args.prompt, chat_template=chat,
                             max_new_tokens=args.max_new_tokens, sample=args.sample,
                             temperature=args.temperature, seed=args.seed)
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as exc:
        print(f"minireft generate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


# ---------------------------------------------------------------------------- demo

# minireft.demo.demo.DEFAULTS, repeated so that --help needs no torch (tests/test_demo.py compares them)
DEMO = {"output": "runs/demo", "n_train": 256, "n_eval": 200, "layers": "14,20", "rank": 4,
        "positions": "l3", "epochs": 1, "batch_size": 8, "lr": 4e-3}


def _add_demo(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="train LoReFT on SmolLM2-135M for review sentiment, offline, in minutes on a CPU",
        description="Load SmolLM2-135M-Instruct (packaged, offline), measure its zero-shot accuracy "
                    "on held-out Rotten Tomatoes reviews (positive/negative), train a LoReFT adapter "
                    "on a few hundred reviews, measure again, show a few generations, save the "
                    "adapter and print a summary table.")
    p.add_argument("--output", default=DEMO["output"], metavar="DIR",
                   help=f"the adapter folder to write (default {DEMO['output']})")
    p.add_argument("--n-train", type=int, default=DEMO["n_train"], help="training reviews")
    p.add_argument("--n-eval", type=int, default=DEMO["n_eval"], help="held-out reviews")
    p.add_argument("--layers", type=_layer_list, default=_layer_list(DEMO["layers"]), metavar="L",
                   help=f"0-based blocks, e.g. 14,20 (default {DEMO['layers']})")
    p.add_argument("--rank", type=int, default=DEMO["rank"])
    p.add_argument("--positions", default=DEMO["positions"], help=f"default {DEMO['positions']}")
    p.add_argument("--epochs", type=int, default=DEMO["epochs"])
    p.add_argument("--batch-size", type=int, default=DEMO["batch_size"])
    p.add_argument("--lr", type=float, default=DEMO["lr"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _run_demo(args) -> int:
    from minireft.demo.demo import run_demo

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        _check_output(args.output)
        run_demo(args.output, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed,
                 layers=args.layers, rank=args.rank, positions=args.positions, epochs=args.epochs,
                 batch_size=args.batch_size, lr=args.lr, threads=args.threads, progress=not args.quiet)
    except KeyboardInterrupt:
        print("minireft demo: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError, FloatingPointError) as exc:
        print(f"minireft demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------- registry

SUBCOMMANDS = {
    "check": (_add_check, _run_check),
    "train": (_add_train, _run_train),
    "generate": (_add_generate, _run_generate),
    "demo": (_add_demo, _run_demo),
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


def _needs_torch(command: str) -> str | None:
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
        problem = _needs_torch(args.command) if args.command in TORCH_COMMANDS else None
        if problem:
            print(problem, file=sys.stderr)
            return 2
        return args.func(args)
    except KeyboardInterrupt:  # a subcommand that has no handler of its own
        print(f"minireft {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
