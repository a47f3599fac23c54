"""Text in, text out: one prompt completed by a (Reft)model, greedy or sampled."""

from __future__ import annotations

import torch

from minireft.hf.data import encode_prompt, pad_id
from minireft.hf.prompt_format import resolve_chat_template
from minireft.hf.loss import model_device


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, *, chat_template: bool | None = None,
                  max_new_tokens: int = 64, sample: bool = False, temperature: float = 1.0,
                  seed: int = 0) -> str:
    """The completion `model` (a ReftModel) writes for one prompt, new tokens only, decoded
    without special tokens. Greedy unless `sample`; sampling is seeded. chat_template=None:
    as the adapter was trained (model.prompt_format; raw prompts when unknown). An empty or
    blank prompt is refused (ValueError), as training refuses one: ReFT edits prompt tokens."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt is empty ({prompt!r}); ReFT edits prompt tokens, so it needs a prompt")
    chat_template = resolve_chat_template(getattr(model, "prompt_format", None), chat_template)
    ids = encode_prompt(tokenizer, prompt, chat_template=chat_template)
    device = model_device(model)
    input_ids = torch.tensor([ids], device=device)  # (1, n)
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": sample, "pad_token_id": pad_id(tokenizer)}
    if sample:
        torch.manual_seed(seed)
        kwargs |= {"temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)  # (1, n + new)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
