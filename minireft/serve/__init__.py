"""Serving ReFT adapters on vLLM (the `serve` extra; vLLM lives in its own environment).

    minireft serve --model FOLDER --adapter NAME=DIR [--adapter NAME=DIR ...]    OpenAI server
    minireft.serve.offline.generate(model, adapters, prompts, params, names)     offline

How a request reaches its adapter, by vLLM's own extension points:
- `plugin.register` (entry point `vllm.general_plugins`, run in every vLLM process) swaps the
  model classes minireft supports for subclasses (`model`) whose decoder layers are hooked;
- `plugin.ReftBatchTracker` (a logits processor; vLLM tells it which request sits at which
  row of the batch before each forward pass) keeps each row's prompt length and adapter;
- the hooked layers apply `minireft.torch.packed_edit` to the block output of that forward
  pass's flat tokens, so a batch mixes adapters and the bare model;
- a request names its adapter in SamplingParams.extra_args["minireft_adapter"]; the server
  (`api.ReftMiddleware`) sets it from the request's "model" field, with a cache salt.

Imports hf and the mirror, never the other way round.
"""
