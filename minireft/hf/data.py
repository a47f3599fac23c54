"""Examples → token ids → padded batches, for training and evaluation.

Language modelling ("lm"): an example is {"prompt": str, "completion": str}. It becomes

    input_ids = prompt_ids + completion_ids + [eos]          (n tokens, n <= max_length)
    labels    = [-100] * len(prompt_ids) + completion_ids + [eos]
    prompt_length = len(prompt_ids)

so the loss sees completion tokens only, and the intervention edits prompt tokens
only (ReftModel's `prompt_lengths`). The prompt and completion are tokenised
separately, so the prompt's ids are exactly those `generate` sees for the same prompt.

Classification ("classification"): an example is {"text": str, "label": int} (or
{"prompt": ..., "label": ...}); every token is "prompt" (edited), and the label is one
int per example.

`collate` pads a list of encoded examples to one (B, T) batch, right or left.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100  # the label that torch's cross-entropy, and ours, skip
TASKS = ("lm", "classification")


def _text_field(example, index: int, keys: Sequence[str]) -> str:
    if not isinstance(example, dict):
        raise TypeError(f"example {index} must be a dict, got {type(example).__name__}")
    for key in keys:
        if key in example:
            value = example[key]
            if not isinstance(value, str):
                raise TypeError(f"example {index}: {key!r} must be a string, got {type(value).__name__}")
            return value
    wanted = " or ".join(repr(k) for k in keys)
    raise KeyError(f"example {index} has no {wanted} key; its keys are {sorted(example)}")


def prompt_text(tokenizer, prompt: str, *, chat_template: bool = False) -> str:
    """The prompt as the model reads it: raw, or wrapped in the tokenizer's chat template
    as one user turn followed by the assistant's generation prompt."""
    if not chat_template:
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat_template=True, but this tokenizer has no chat template; drop the option")
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer, prompt: str, *, chat_template: bool = False) -> list[int]:
    """Token ids of the prompt. A chat template already writes its special tokens (BOS…),
    so the tokenizer adds none then; a raw prompt gets the tokenizer's usual ones."""
    text = prompt_text(tokenizer, prompt, chat_template=chat_template)
    return list(tokenizer(text, add_special_tokens=not chat_template)["input_ids"])


def encode_example(tokenizer, example: dict, index: int = 0, *, task: str = "lm",
                   chat_template: bool = False, max_length: int = 512) -> dict:
    """One example → {"input_ids": list[int], "labels": list[int] | int, "prompt_length": int}."""
    if task == "classification":
        return _encode_classification(tokenizer, example, index, max_length)
    if task != "lm":
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    prompt = _text_field(example, index, ("prompt",))
    completion = _text_field(example, index, ("completion",))
    if not prompt.strip():
        raise ValueError(f"example {index} has an empty prompt; ReFT edits prompt tokens, so it needs one")
    prompt_ids = encode_prompt(tokenizer, prompt, chat_template=chat_template)
    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"example {index}: the prompt is {len(prompt_ids)} tokens, which leaves no room for the "
            f"completion within max_length={max_length}; shorten it or raise max_length"
        )
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    if not completion_ids:
        raise ValueError(f"example {index} has an empty completion and the tokenizer has no EOS token")
    # Truncate the completion (never the prompt: positions count from both of its ends).
    completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        "prompt_length": len(prompt_ids),
    }


def _encode_classification(tokenizer, example, index: int, max_length: int) -> dict:
    text = _text_field(example, index, ("text", "prompt"))
    if "label" not in example:
        raise KeyError(f"example {index} has no 'label' key; its keys are {sorted(example)}")
    label = example["label"]
    if isinstance(label, bool):
        label = int(label)
    if not isinstance(label, int) or label < 0:
        raise ValueError(f"example {index}: 'label' must be a non-negative int (a class index), got {label!r}")
    if not text.strip():
        raise ValueError(f"example {index} has an empty text; ReFT edits its tokens, so it needs one")
    ids = list(tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"])
    return {"input_ids": ids, "labels": label, "prompt_length": len(ids)}


def encode_examples(tokenizer, examples: Sequence[dict], *, task: str = "lm",
                    chat_template: bool = False, max_length: int = 512) -> list[dict]:
    """`encode_example` over a list; errors name the example's index."""
    if isinstance(examples, (str, dict)) or not isinstance(examples, Sequence):
        raise TypeError(f"examples must be a list of dicts, got {type(examples).__name__}")
    if len(examples) == 0:
        raise ValueError("examples is empty: there is nothing to train or evaluate on")
    return [encode_example(tokenizer, ex, i, task=task, chat_template=chat_template, max_length=max_length)
            for i, ex in enumerate(examples)]


def pad_id(tokenizer) -> int:
    """The id used for padding: pad, else EOS, else 0 (the attention mask hides it anyway)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def collate(encoded: Sequence[dict], pad_token_id: int = 0, *, padding_side: str = "right") -> dict:
    """Pad B encoded examples to T = the longest one.

    Returns input_ids (B, T) long, attention_mask (B, T) long (1 = real token),
    prompt_lengths (B,) long, and labels: (B, T) long with IGNORE_INDEX on padding for
    "lm" examples, (B,) long for classification examples.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    T = max(len(e["input_ids"]) for e in encoded)

    def pad(seq, value):
        fill = [value] * (T - len(seq))
        return list(seq) + fill if padding_side == "right" else fill + list(seq)

    batch = {
        "input_ids": torch.tensor([pad(e["input_ids"], pad_token_id) for e in encoded]),  # (B, T)
        "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in encoded]),  # (B, T)
        "prompt_lengths": torch.tensor([e["prompt_length"] for e in encoded]),  # (B,)
    }
    if isinstance(encoded[0]["labels"], list):
        batch["labels"] = torch.tensor([pad(e["labels"], IGNORE_INDEX) for e in encoded])  # (B, T)
    else:
        batch["labels"] = torch.tensor([e["labels"] for e in encoded])  # (B,)
    return batch
