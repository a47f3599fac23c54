"""The server side of routing: a request's "model" field picks its adapter.

vLLM serves every adapter name as a model name (--served-model-name base a1 a2 ...), so
/v1/models lists them and an unknown name gets vLLM's own 404 JSON error. This ASGI
middleware (vLLM's --middleware) rewrites the JSON body of a completion or chat request that
names an adapter: vllm_xargs carries the name to the engine (SamplingParams.extra_args, read
by ReftBatchTracker), and cache_salt keys its cached prompt blocks (`salt`).
"""

from __future__ import annotations

import hashlib
import json

from minireft.serve.adapters import EXTRA_ARG, from_env

ROUTES = ("/v1/completions", "/v1/chat/completions")
# The request fields that decide the prompt's tokens.
PROMPT_FIELDS = ("prompt", "messages", "chat_template", "chat_template_kwargs", "add_generation_prompt",
                 "continue_final_message", "add_special_tokens", "tools", "documents", "cache_salt")


def salt(name: str, key) -> str:
    """The cache salt of an adapter's prompt: "minireft|{name}|{key}" (vLLM refuses a salt with
    "/" or "@", or over 128 characters: names are at most 64 of [A-Za-z0-9._:-]).

    Why the key: a prompt's suffix positions depend on its length n (the last s tokens), so an
    edited block's states depend on n and on the adapter; blocks may be shared only between
    prompts of the same adapter and the same n. The offline entry knows n (key = n); the
    server sees text, so its key hashes the fields that decide the tokens: identical prompts
    share cached blocks, different ones never do. The bare model keeps vLLM's own caching.
    """
    return f"minireft|{name}|{key}"


def prompt_key(data: dict) -> str:
    fields = {k: data.get(k) for k in PROMPT_FIELDS if k in data}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


class ReftMiddleware:
    def __init__(self, app):
        self.app = app
        self.names = {n for n, _ in from_env() or []}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in ROUTES:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        routed = self._route(body)
        if routed is not None:
            body = routed
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
            scope = dict(scope, headers=headers + [(b"content-length", str(len(body)).encode())])
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}],
                                             receive), send)

    def _route(self, body: bytes) -> bytes | None:
        try:
            data = json.loads(body)
        except ValueError:
            return None  # vLLM answers the malformed body itself
        if not isinstance(data, dict) or data.get("model") not in self.names:
            return None
        name = data["model"]
        xargs = data.get("vllm_xargs") if isinstance(data.get("vllm_xargs"), dict) else {}
        data["vllm_xargs"] = {**xargs, EXTRA_ARG: name}
        data["cache_salt"] = salt(name, prompt_key(data))
        return json.dumps(data).encode()


def _replay(messages, receive):
    pending = list(messages)

    async def replay():
        return pending.pop(0) if pending else await receive()

    return replay
