"""The offline entry: vLLM's LLM with the served adapters, an adapter name per prompt.

    llm = load(model_dir, {"sst": "runs/sst", "qa": "runs/qa"})
    outs = generate(llm, prompts, SamplingParams(max_tokens=32, temperature=0), ["sst", None])

Call them under `if __name__ == "__main__":` (vLLM starts worker processes).
"""

from __future__ import annotations

import os

from minireft.serve.adapters import (ARCHITECTURES, ENV, EXTRA_ARG, load_all, model_shape, parse_specs,
                                     to_env)
from minireft.serve.api import salt
from minireft.serve.plugin import register
from minireft.serve.settings import KV_CACHE_BYTES, bind_all_cores


def load(model, adapters, **llm_kwargs):
    """vllm.LLM on the HF folder `model` with adapters {name: dir} (or ["NAME=DIR"]) loaded;
    float32, eager, prefix caching on, a 2 GiB KV cache, unless llm_kwargs say otherwise; on a
    machine of 2 cores the model gets both (minireft.serve.settings). Refuses bad adapters
    before vLLM starts, naming the file."""
    specs = [f"{n}={d}" for n, d in adapters.items()] if isinstance(adapters, dict) else list(adapters)
    pairs = parse_specs(specs)
    hidden, depth, arch = model_shape(model)
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture {arch} is not one minireft serves ({', '.join(ARCHITECTURES)})")
    load_all(pairs, hidden, depth)
    os.environ[ENV] = to_env(pairs)
    bind_all_cores()
    register()  # in this process too, in case vLLM loaded its plugins before ENV was set
    from vllm import LLM

    from minireft.serve.tracker import ReftBatchTracker

    kwargs = dict(dtype="float32", enforce_eager=True, enable_prefix_caching=True,
                  logits_processors=[ReftBatchTracker], kv_cache_memory_bytes=KV_CACHE_BYTES)
    return LLM(model=str(model), **{**kwargs, **llm_kwargs})


def generate(llm, prompts, sampling_params, adapter_names):
    """llm.generate with prompt i (text, or a list of token ids) under adapter_names[i] (None:
    the bare model). sampling_params: one SamplingParams or one per prompt. Returns vLLM's
    RequestOutputs in prompt order."""
    if len(adapter_names) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(adapter_names)} adapter names")
    params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
    tokenizer = llm.get_tokenizer() if any(isinstance(p, str) for p in prompts) else None
    inputs, per_prompt = [], []
    for prompt, p, name in zip(prompts, params, adapter_names):
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        item = {"prompt_token_ids": ids}
        if name is not None:
            p = p.clone()
            p.extra_args = {**(p.extra_args or {}), EXTRA_ARG: name}
            item["cache_salt"] = salt(name, len(ids))  # key = n, exact here (api.salt says why)
        inputs.append(item)
        per_prompt.append(p)
    return llm.generate(inputs, per_prompt, use_tqdm=False)
