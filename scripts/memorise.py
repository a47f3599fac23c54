"""The paper's memorisation check on SmolLM2-135M: one rank-1 LoReFT, one position, one layer.

A single intervention Φ(h) = h + rᵀ(w·h + b − r·h) (R = r ∈ ℝ^{1×d}) at the last token of a
fixed prompt, at the output of one block, is trained on a single example until greedy
generation from that prompt reproduces a fixed passage token for token. The adapter is
2·d + 1 = 1153 numbers; the passage is real text (Thoreau, *Walden*, 1854, public domain).

For each passage length n (tokens, a prefix of the passage) the script trains a fresh
adapter for at most --max-steps steps (Adam / Riemannian Adam, constant lr unless --decay)
and after every step checks recall for free from the training forward itself: under teacher
forcing the argmax at every passage position equals the passage token. When that holds,
greedy generation (KV cache, edit at prefill only) confirms the exact recall. It prints a
table of length, steps, seconds, greedy recall (the longest exactly reproduced prefix) and
teacher-forced token accuracy, then the longest passage recalled exactly.

    python scripts/memorise.py                      # lengths 32 64 128 256, layer 10, lr 1e-2
    python scripts/memorise.py --lengths 64 --layer 8 --lr 1e-2 --max-steps 300

Measured on 2 CPU cores of a mostly idle machine (torch 2.13, 2 threads), the defaults:

    tokens  steps  seconds  s/step  recalled  base  exact
        32     40      9.3   0.232        32     0  yes
        64     55     17.3   0.315        64     0  yes
       128    361    176.3   0.488       128     0  yes
       256    600    565.6   0.943         5     0  no

so the longest passage recalled exactly is 128 tokens (in ~3 minutes); the whole run takes
~13 minutes, most of it the 256-token attempt. For 256 tokens, 400 steps with --decay
reached a teacher-forced token accuracy of 0.72 (greedy recall 10/256), and layer 4
learned more slowly than layer 10.

`memorise(...)` is also what tests/test_real_model.py calls for its 64-token check.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from minireft import ReftConfig

# Henry David Thoreau, Walden (1854), "Where I Lived, and What I Lived For": public domain.
PASSAGE = (
    "I went to the woods because I wished to live deliberately, to front only the essential "
    "facts of life, and see if I could not learn what it had to teach, and not, when I came to "
    "die, discover that I had not lived. I did not wish to live what was not life, living is so "
    "dear; nor did I wish to practise resignation, unless it was quite necessary. I wanted to "
    "live deep and suck out all the marrow of life, to live so sturdily and Spartan-like as to "
    "put to rout all that was not life, to cut a broad swath and shave close, to drive life into "
    "a corner, and reduce it to its lowest terms, and, if it proved to be mean, why then to get "
    "the whole and genuine meanness of it, and publish its meanness to the world; or if it were "
    "sublime, to know it by experience, and be able to give a true account of it in my next "
    "excursion. Still we live meanly, like ants; though the fable tells us that we were long ago "
    "changed into men; like pygmies we fight with cranes; it is error upon error, and clout upon "
    "clout, and our best virtue has for its occasion a superfluous and evitable wretchedness. Our "
    "life is frittered away by detail. An honest man has hardly need to count more than his ten "
    "fingers, or in extreme cases he may add his ten toes, and lump the rest. Simplicity, "
    "simplicity, simplicity! I say, let your affairs be as two or three, and not a hundred or a "
    "thousand; instead of a million count half a dozen, and keep your accounts on your thumb-nail."
)
PROMPT = "Recite the passage."  # raw text, no chat template: the shorter the prompt, the cheaper a step
LAYER = 10
LR = 1e-2


def memorisation_config(layer: int = LAYER) -> ReftConfig:
    """Rank-1 LoReFT at the last prompt token ("l1") of one block."""
    return ReftConfig(layers=(layer,), rank=1, positions="l1", intervention="loreft", init="paper")


def passage_ids(tokenizer, n_tokens: int | None = None, passage: str = PASSAGE) -> list[int]:
    """The first n_tokens token ids of the passage (all when None)."""
    ids = tokenizer(passage, add_special_tokens=False)["input_ids"]
    if n_tokens is not None and n_tokens > len(ids):
        raise ValueError(f"the passage has {len(ids)} tokens; asked for {n_tokens}")
    return list(ids[:n_tokens])


def prompt_ids(tokenizer, prompt: str = PROMPT) -> list[int]:
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def recalled_prefix(generated: list[int], target: list[int]) -> int:
    """How many leading tokens of `target` `generated` reproduces exactly."""
    n = 0
    for g, t in zip(generated, target):
        if g != t:
            break
        n += 1
    return n


@torch.no_grad()
def greedy(model, prompt: list[int], n_new: int) -> list[int]:
    """Greedy continuation of `prompt`, n_new tokens (no early stop at EOS): a list of ids."""
    ids = torch.tensor([prompt])  # (1, n)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                         min_new_tokens=n_new, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def memorise(model, tokenizer, n_tokens: int = 64, *, layer: int = LAYER, lr: float = LR,
             max_steps: int = 400, decay: bool = False, seed: int = 0, log_every: int = 0) -> dict:
    """Train a fresh rank-1 adapter on (PROMPT → first n_tokens of PASSAGE) until the
    teacher-forced argmax reproduces every passage token, then confirm with greedy generation.
    The learning rate is constant, or with `decay` falls linearly from lr to 0 over max_steps.

    Returns {"n_tokens", "steps", "seconds", "teacher_forced_exact", "token_accuracy" (the best
    fraction of passage tokens that were the teacher-forced argmax), "recalled" (leading tokens
    of greedy generation matching the passage), "exact", "base_recalled", "reft_model"}; the
    ReftModel stays attached (call .detach() to get the base model back); on an error it is
    detached before the error propagates.
    """
    from minireft.hf.model import attach

    prompt, target = prompt_ids(tokenizer), passage_ids(tokenizer, n_tokens)
    base_recalled = recalled_prefix(greedy(model, prompt, len(target)), target)
    reft = attach(model, memorisation_config(layer), seed=seed)
    try:
        result = _train(reft, prompt, target, lr=lr, max_steps=max_steps, decay=decay, log_every=log_every)
        return result | {"base_recalled": base_recalled, "reft_model": reft}
    except BaseException:
        reft.detach()
        raise


def _train(reft, prompt: list[int], target: list[int], *, lr, max_steps, decay, log_every) -> dict:
    """The loop of `memorise`: full-batch steps on the one example until teacher-forced recall is exact."""
    from minireft.torch.optim import ReftOptimizer

    optimizer = ReftOptimizer.for_named_parameters(reft.named_trainable_parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda t: max(0.0, 1 - t / max_steps)) if decay else (lambda t: 1.0))
    input_ids = torch.tensor([prompt + target])  # (1, n_prompt + n)
    prompt_lengths = torch.tensor([len(prompt)])  # (1,): only the prompt is edited
    targets = input_ids[0, len(prompt):]  # (n,)
    reft.train()
    reft.model.eval()  # the base model's dropout stays off
    start, steps, exact, token_accuracy = time.perf_counter(), 0, False, 0.0
    while steps < max_steps:
        # logits at positions n_prompt − 1 … end − 1 predict the n passage tokens
        logits = reft(input_ids=input_ids, prompt_lengths=prompt_lengths, use_cache=False,
                      logits_to_keep=len(target) + 1).logits[0, :-1]  # (n, V)
        right = logits.argmax(-1) == targets  # (n,)
        token_accuracy = max(token_accuracy, float(right.float().mean()))
        if bool(right.all()):  # recall already exact: stop before stepping
            exact = True
            break
        loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        steps += 1
        if log_every and steps % log_every == 0:
            print(f"  n={len(target)} step {steps} loss {loss.item():.4f} teacher-forced token accuracy "
                  f"{float(right.float().mean()):.3f}", flush=True)
    seconds = time.perf_counter() - start
    reft.eval()
    recalled = recalled_prefix(greedy(reft, prompt, len(target)), target)
    return {"n_tokens": len(target), "steps": steps, "seconds": seconds, "teacher_forced_exact": exact,
            "token_accuracy": token_accuracy, "recalled": recalled, "exact": recalled == len(target)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256],
                        help="passage lengths in tokens (prefixes of the passage)")
    parser.add_argument("--layer", type=int, default=LAYER, help="the block whose output is edited")
    parser.add_argument("--lr", type=float, default=LR, help="constant learning rate (Adam / Riemannian Adam)")
    parser.add_argument("--max-steps", type=int, default=600, help="give up on a length after this many steps")
    parser.add_argument("--decay", action="store_true", help="lr falls linearly to 0 over --max-steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)

    from minireft.hf.loading import load_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tokenizer = load_model()
    total = len(passage_ids(tokenizer))
    print(f"SmolLM2-135M loaded in {time.perf_counter() - t0:.1f} s; passage {total} tokens; "
          f"prompt {PROMPT!r} ({len(prompt_ids(tokenizer))} tokens); rank 1, position l1, "
          f"layer {args.layer}, lr {args.lr:g}, at most {args.max_steps} steps")
    rows = []
    for n in args.lengths:
        if n > total:
            print(f"skipping {n}: the passage has {total} tokens")
            continue
        result = memorise(model, tokenizer, n, layer=args.layer, lr=args.lr, max_steps=args.max_steps,
                          decay=args.decay, seed=args.seed, log_every=args.log_every)
        result.pop("reft_model").detach()
        rows.append(result)
        print(f"n={n}: {result['steps']} steps, {result['seconds']:.1f} s, greedy recall "
              f"{result['recalled']}/{n} (base model: {result['base_recalled']}/{n})", flush=True)

    print(f"\n{'tokens':>6} {'steps':>6} {'seconds':>8} {'s/step':>7} {'recalled':>9} {'base':>5} "
          f"{'tf token acc':>12}  exact")
    for r in rows:
        per_step = r["seconds"] / max(1, r["steps"])
        print(f"{r['n_tokens']:>6} {r['steps']:>6} {r['seconds']:>8.1f} {per_step:>7.3f} "
              f"{r['recalled']:>9} {r['base_recalled']:>5} {r['token_accuracy']:>12.3f}  "
              f"{'yes' if r['exact'] else 'no'}")
    print("recalled: leading passage tokens that greedy generation reproduces; base: the same "
          "without the adapter;\ntf token acc: best fraction of passage tokens that were the "
          "teacher-forced argmax during training")
    exact = [r["n_tokens"] for r in rows if r["exact"]]
    params = 2 * 576 + 1
    if exact:
        print(f"\nlongest passage recalled exactly: {max(exact)} tokens, by a rank-1 LoReFT "
              f"({params} parameters) at one position of layer {args.layer}")
    else:
        print("\nno passage length was recalled exactly; raise --max-steps or try another --layer/--lr")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
