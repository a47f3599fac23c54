"""Baseline numbers for SmolLM2-135M-Instruct on CPU, to size the training demo.

    python scripts/probe_smollm2.py [--threads 2] [--n 100] [--skip-load-check]

Prints:
  load      first load (GGUF -> float32 copy, into a fresh temporary cache), cached load,
            and whether the cached copy's logits are bit-identical to the GGUF model's;
  chat      a greedy answer to a chat prompt (is it sensible English?);
  zero-shot accuracy on n held-out Rotten Tomatoes reviews (test split, seed 0), prompt
            via the chat template: (i) first answer token, logit of "positive" vs
            "negative" (what a model trained on completion "positive"/"negative" is
            scored by), (ii) greedy generation of up to 8 tokens, the first of the two
            words that appears (case-insensitive);
  step      forward + backward time, batch 8 x 64 tokens, weights frozen, gradient down
            to the input embeddings (the cost of ReFT at layer 0), and forward alone;
  decode    greedy decode speed, 32 new tokens, batch 1 and batch 8.
Offline: set HF_HUB_OFFLINE=1 and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from minireft.demo import datasets
from minireft.hf.loading import load_gguf, load_model


def chat_ids(tokenizer, prompts: list[str]) -> dict:
    """Left-padded batch of chat-templated prompts with the assistant turn opened."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                           add_generation_prompt=True, tokenize=False)
             for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # real-token positions
    return enc


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of `repeat` calls, after one warm-up call.

    On a shared machine wall time depends on the other load; with 1 thread the CPU time
    is close to the wall time on an idle core.
    """
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def probe_load(check: bool):
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        load_model(cache_dir=tmp)
        first = time.perf_counter() - t
        t = time.perf_counter()
        model, tokenizer = load_model(cache_dir=tmp)
        cached = time.perf_counter() - t
    print(f"load: first (GGUF dequantise + save + reload) {first:.1f} s, cached {cached:.2f} s")
    if check:
        gguf_model, _ = load_gguf()
        enc = chat_ids(tokenizer, ["Name three primary colours."])
        with torch.no_grad():
            a = gguf_model(**enc).logits
            b = model(**enc).logits
        print(f"load: cached copy logits bit-identical to GGUF model: {torch.equal(a, b)} "
              f"(max |diff| {float((a - b).abs().max()):.3g}, {tuple(a.shape)})")
        del gguf_model
    print(f"tokenizer: {type(tokenizer).__name__}, pad {tokenizer.pad_token!r} "
          f"(id {tokenizer.pad_token_id}), eos {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), "
          f"bos {tokenizer.bos_token!r}, padding_side {tokenizer.padding_side}, "
          f"model_max_length {tokenizer.model_max_length}, "
          f"chat template {'present' if tokenizer.chat_template else 'MISSING'}")
    return model, tokenizer


def probe_chat(model, tokenizer):
    enc = chat_ids(tokenizer, ["What is the capital of France, and what is it famous for?"])
    enc.pop("position_ids")
    out = model.generate(**enc, max_new_tokens=40, do_sample=False)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"chat: {answer!r}")


def probe_zero_shot(model, tokenizer, n: int, batch: int = 20):
    rows = datasets.rotten_tomatoes("test", n=n, seed=0)
    pos = tokenizer("positive", add_special_tokens=False).input_ids[0]
    neg = tokenizer("negative", add_special_tokens=False).input_ids[0]
    first_ok = gen_ok = unparsed = said_pos = 0
    t = time.perf_counter()
    for i in range(0, n, batch):
        chunk = rows[i:i + batch]
        enc = chat_ids(tokenizer, [r["prompt"] for r in chunk])
        with torch.no_grad():
            last = model(**enc).logits[:, -1]  # (B, vocab)
        pred_first = (last[:, pos] > last[:, neg]).long().tolist()
        enc.pop("position_ids")
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for r, pf, text in zip(chunk, pred_first, texts):
            first_ok += pf == r["label"]
            said_pos += pf
            low = text.lower()
            hits = [(low.find(w), y) for w, y in (("positive", 1), ("negative", 0)) if w in low]
            if not hits:
                unparsed += 1
            else:
                gen_ok += min(hits)[1] == r["label"]
    dt = time.perf_counter() - t
    print(f"zero-shot rotten_tomatoes test n={n}: first-token acc {first_ok / n:.2f} "
          f"(predicts positive {said_pos}/{n}); generation acc {gen_ok / n:.2f} "
          f"({unparsed} answers name neither word) [{dt:.0f} s]")
    print(f"prompt example: {rows[0]['prompt']!r} -> {rows[0]['completion']!r}")


def probe_step(model, tokenizer, batch: int = 8, seq: int = 64):
    prompts = [r["prompt"] for r in datasets.rotten_tomatoes("train", n=batch, seed=1)]
    enc = chat_ids(tokenizer, prompts)
    ids = enc["input_ids"][:, -seq:]  # (B, seq): the last 64 tokens of each
    mask = enc["attention_mask"][:, -seq:]
    print(f"step: batch {tuple(ids.shape)}, real tokens per row {mask.sum(-1).tolist()}")
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()

    def fwd_bwd():
        x = emb(ids).detach().requires_grad_(True)  # (B, seq, d)
        logits = model(inputs_embeds=x, attention_mask=mask).logits  # (B, seq, vocab)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()

    def fwd():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

    (fb_wall, fb_cpu), (f_wall, f_cpu) = timed(fwd_bwd, 3), timed(fwd, 3)
    print(f"step: forward+backward {fb_wall:.2f} s wall ({fb_cpu:.2f} s CPU), forward (no grad) "
          f"{f_wall:.2f} s wall ({f_cpu:.2f} s CPU), per batch of {batch} x {seq} tokens")


def probe_decode(model, tokenizer, new: int = 32):
    for b in (1, 8):
        enc = chat_ids(tokenizer, ["Write a short story about a robot who learns to paint."] * b)
        enc.pop("position_ids")

        def gen(enc=enc):
            model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)

        dt, cpu = timed(gen, 2)
        print(f"decode: batch {b}, {new} new tokens in {dt:.2f} s wall ({cpu:.2f} s CPU): "
              f"{b * new / dt:.1f} tokens/s ({new / dt:.1f} steps/s; "
              f"prompt {enc['input_ids'].shape[1]} tokens)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=100, help="held-out reviews for zero-shot accuracy")
    ap.add_argument("--skip-load-check", action="store_true",
                    help="skip the second GGUF load that checks bit-identical logits")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU "
          f"({os.cpu_count()} cores, load average {load:.1f}: timings are wall clock, shared)")
    model, tokenizer = probe_load(check=not args.skip_load_check)
    probe_chat(model, tokenizer)
    probe_zero_shot(model, tokenizer, args.n)
    probe_step(model, tokenizer)
    probe_decode(model, tokenizer)


if __name__ == "__main__":
    main()
