"""Throughput of `minireft serve` (issue 18 item 5), measured in one run on SmolLM2:

  64 concurrent completions spread over 4 adapters  vs  the same 64 to the bare model,
  on the same server (generated tokens/s; target ratio >= 0.9; bursts alternated, --rounds
  of each), and minireft's own batched ReftModel.generate in one process on the same 64, at
  each of --batch-sizes rows a batch, the best the baseline (target: the server >= 3x).
  Time to first token (median, p90) from the streamed responses. Every prompt of a run
  starts with its own tag, "(b0.17) ...", so no request finds another's prompt in vLLM's
  prefix cache: both sides compute every prompt. And a roofline: the tokens/s the model's
  FLOPs per token allow at this machine's matmul rate at decode shapes (decode_bound).

    .venv-serve/bin/python scripts/bench_serve.py [--port 8011] [--tokens 64] [--rounds 2]

Run it alone: the numbers are CPU-bound and the machine's other jobs move them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_check import TEXTS, make_adapters  # noqa: E402  (the same prompts and adapter recipe)

ADAPTERS = 4


async def one(session, url, model, prompt, tokens):
    """(seconds to first token, generated tokens, total seconds) of one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    start, first, count = time.perf_counter(), None, 0
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("choices") and first is None:
                first = time.perf_counter() - start
            if data.get("usage"):
                count = data["usage"]["completion_tokens"]
    return first, count, time.perf_counter() - start


async def burst(port, models, prompts, tokens):
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/completions"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(session, url, m, p, tokens) for m, p in zip(models, prompts)))
        wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    return {"tokens_per_s": sum(r[1] for r in results) / wall, "wall_s": wall,
            "ttft_median_s": statistics.median(ttft), "ttft_p90_s": ttft[int(0.9 * (len(ttft) - 1))]}


def pooled(bursts):
    """The bursts' tokens/s over their summed wall time; the TTFTs of each burst listed."""
    tokens = sum(b["tokens_per_s"] * b["wall_s"] for b in bursts)
    wall = sum(b["wall_s"] for b in bursts)
    return {"tokens_per_s": tokens / wall, "wall_s": wall, "bursts": bursts}


def wait_ready(port, proc, seconds=600):
    import urllib.request

    for _ in range(seconds):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError("the server did not start")


def minireft_batched(folder, adapters, prompts, names, tokens, batch_size):
    """Generated tokens/s of ReftModel.generate over the 64 requests, batch_size rows a batch, left padded."""
    import torch
    import transformers as tf

    from minireft.hf import ReftModel

    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where vLLM runs too
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval().to(device)
    first, *rest = adapters
    reft = ReftModel.from_pretrained(model, adapters[first], adapter_name=first)
    for name in rest:
        reft.load_adapter(adapters[name], name)
    start, count = time.perf_counter(), 0
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True).to(device)
            out = reft.generate(batch.input_ids, batch.attention_mask, adapter_names=names[i:i + batch_size],
                                max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or 0)
            count += (out.shape[1] - batch.input_ids.shape[1]) * out.shape[0]
    return {"tokens_per_s": count / (time.perf_counter() - start)}


def decode_bound(folder, batch: int = 64) -> dict:
    """A roofline for decode on this machine: the tokens/s that the model's FLOPs per token (2 per
    weight of the blocks and the output head; attention over contexts this short adds little)
    allow at the matmul rate of a decode step's shapes, (batch, d) @ (d, d_ff), on this
    machine's threads. No engine decodes much faster without a faster matmul."""
    import torch

    config = json.loads((Path(folder) / "config.json").read_text())
    d, ff, depth, vocab = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    kv = d * config.get("num_key_value_heads", config["num_attention_heads"]) // config["num_attention_heads"]
    per_block = 2 * d * d + 2 * d * kv + 3 * d * ff  # q, o; k, v; gate, up, down
    flops = 2 * (depth * per_block + d * vocab)
    a, b = torch.randn(batch, d), torch.randn(d, ff)
    for _ in range(5):
        a @ b
    start, n = time.perf_counter(), 200
    for _ in range(n):
        a @ b
    rate = 2 * batch * d * ff * n / (time.perf_counter() - start)
    return {"gflop_per_token": flops / 1e9, "matmul_gflop_per_s": rate / 1e9, "tokens_per_s": rate / flops}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8011, help="the server's port (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per completion (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="bare / four-adapter bursts, alternated (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64],
                        help="minireft generate's rows per batch; the best is the baseline (default: %(default)s)")
    args = parser.parse_args(argv)
    from minireft.hf.loading import converted_copy, load_model

    load_model("smollm2")
    folder = converted_copy("smollm2")
    hidden = json.loads((Path(folder) / "config.json").read_text())["hidden_size"]
    prompts = lambda tag: [f"({tag}{i}) {TEXTS[i % len(TEXTS)]}" for i in range(64)]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(Path(tmp), hidden)
        adapters["lo_f7l7_b"] = adapters["lo_f7l7"]  # a fourth name: same weights, its own cache salt
        names = [list(adapters)[i % ADAPTERS] for i in range(64)]
        # minireft first: vLLM's engine processes may still be winding down after the server exits
        bound = decode_bound(folder)
        own = {size: minireft_batched(folder, adapters, prompts("m"), names, args.tokens, size)
               for size in args.batch_sizes}
        specs = [a for n, p in adapters.items() for a in ("--adapter", f"{n}={p}")]
        proc = subprocess.Popen([sys.executable, "-m", "minireft", "serve", "--model", str(folder),
                                 "--name", "base", "--port", str(args.port), *specs])
        try:
            wait_ready(args.port, proc)
            asyncio.run(burst(args.port, ["base"] * 4, prompts("w")[:4], 4))  # warm up
            runs = {"bare": [], "four_adapters": []}
            for k in range(args.rounds):  # alternated: neither side always runs on a warmer server
                runs["bare"].append(asyncio.run(burst(args.port, ["base"] * 64, prompts(f"b{k}."), args.tokens)))
                runs["four_adapters"].append(asyncio.run(burst(args.port, names, prompts(f"a{k}."), args.tokens)))
            bare, mixed = (pooled(runs[k]) for k in ("bare", "four_adapters"))
        finally:
            proc.terminate()
            proc.wait()
    best = max(own.values(), key=lambda r: r["tokens_per_s"])
    result = {"vllm_cpu_env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_CPU")},
              "bare": bare, "four_adapters": mixed, "minireft_generate_by_batch_size": own,
              "adapters_vs_bare": mixed["tokens_per_s"] / bare["tokens_per_s"],
              "server_vs_minireft_best": mixed["tokens_per_s"] / best["tokens_per_s"],
              "decode_bound": bound, "server_of_bound": mixed["tokens_per_s"] / bound["tokens_per_s"]}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
