"""The prompt format an adapter was trained with, saved in its reft_config.json:

    "prompt_format": {"chat_template": bool, "chat_template_sha256": str | null}

chat_template         whether each prompt was wrapped in the tokenizer's chat template (one
                      user turn, then the generation prompt: minireft.hf.data.prompt_text)
chat_template_sha256  sha256 of the tokenizer's chat_template text at training time (null
                      when it had none): a tokenizer whose template hashes differently
                      builds different prompt tokens, so the adapter sees inputs it was not
                      trained on

An edit at prompt positions only works on the prompts it was trained on, so generation and
evaluation read this and apply the same format without being told. Adapters written before
this field existed still load: the format then comes from the train_log.json that
`minireft train` wrote beside them (its args.chat_template), else it is unknown (None).

No torch here: the CLI reads the format before it loads a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from minireft.hf.recipe import LOG_FILE

FIELD = "prompt_format"  # the key in reft_config.json


@dataclass(frozen=True)
class PromptFormat:
    """How the adapter's training prompts were built (see the module docstring)."""

    chat_template: bool
    chat_template_sha256: str | None = None

    def to_dict(self) -> dict:
        return {"chat_template": self.chat_template, "chat_template_sha256": self.chat_template_sha256}

    @classmethod
    def from_dict(cls, data: dict) -> PromptFormat:
        if not isinstance(data, dict) or not isinstance(data.get("chat_template"), bool):
            raise TypeError(f"{FIELD} must be {{'chat_template': bool, 'chat_template_sha256': str | "
                             f"null}}, got {data!r}")
        digest = data.get("chat_template_sha256")
        if digest is not None and not isinstance(digest, str):
            raise TypeError(f"{FIELD}.chat_template_sha256 must be a string or null, got {digest!r}")
        return cls(data["chat_template"], digest)


def template_sha256(tokenizer) -> str | None:
    """sha256 (hex) of tokenizer.chat_template, None when it has none. A dict of named
    templates is hashed as its JSON with sorted keys."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def training_chat_template(tokenizer, chat_template: bool | None, task: str = "lm") -> bool:
    """Whether train() wraps prompts: chat_template when given; None (the default): True for an "lm" task whose tokenizer has
    a chat template, else False (classification never wraps its text)."""
    if chat_template is not None:
        return bool(chat_template)
    return task == "lm" and getattr(tokenizer, "chat_template", None) is not None


def prompt_format_of(tokenizer, chat_template: bool) -> PromptFormat:
    """The format of prompts built by `tokenizer` with or without its chat template."""
    return PromptFormat(bool(chat_template), template_sha256(tokenizer) if chat_template else None)


def read_prompt_format(path) -> PromptFormat | None:
    """The prompt format of the adapter folder `path`: its reft_config.json field, else the
    legacy train_log.json's args.chat_template, else None (unknown). Reads JSON only."""
    from minireft.io import CONFIG_FILE

    path = Path(path)
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    if isinstance(meta, dict) and meta.get(FIELD) is not None:
        return PromptFormat.from_dict(meta[FIELD])
    try:
        legacy = json.loads((path / LOG_FILE).read_text())["args"]["chat_template"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return PromptFormat(bool(legacy)) if isinstance(legacy, bool) else None


def template_mismatch(fmt: PromptFormat | None, tokenizer) -> str | None:
    """A one-line message when the adapter used a chat template whose hash differs from
    `tokenizer`'s (or the tokenizer has none), else None."""
    if fmt is None or not fmt.chat_template or fmt.chat_template_sha256 is None:
        return None
    now = template_sha256(tokenizer)
    if now == fmt.chat_template_sha256:
        return None
    what = "has no chat template" if now is None else "has a different chat template"
    return (f"the adapter was trained with a chat template (sha256 {fmt.chat_template_sha256[:12]}…), but "
            f"this tokenizer {what}; its prompts differ from the training prompts")


def resolve_chat_template(fmt: PromptFormat | None, override: bool | None = None) -> bool:
    """Whether to apply the chat template: `override` when given, else the adapter's format,
    else False (an adapter of unknown format: raw prompts)."""
    if override is not None:
        return bool(override)
    return bool(fmt.chat_template) if fmt is not None else False
