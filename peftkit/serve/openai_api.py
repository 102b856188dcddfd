"""The OpenAI-compatible completions (causal-lm runs): request -> prompt ids -> response body.

    POST /v1/completions       prompt text(s), tokenized as given (no template)
    POST /v1/chat/completions  messages through the run's prompt layout (data.template: the
                               tokenizer's chat template where it has one), as `peftkit predict`
    `model` names the adapter, so existing OpenAI clients work unchanged.

Prompts are tokenized in the model thread (payload -> ids inside `run`): a fast tokenizer used
from two threads at once fails with "Already borrowed".
"""

from __future__ import annotations

import time
import uuid

from peftkit.serve.errors import ApiError
from peftkit.serve.schemas import ChatRequest, CompletionRequest, Limits, Sampled


def sampling_for(req: Sampled, max_tokens: int | None, recipe, limits: Limits):
    from peftkit.tasks.causal_lm import Sampling

    if req.stream:
        raise ApiError(400, "stream: streamed responses are not supported; send stream=false",
                       param="stream")
    if req.n != 1:
        raise ApiError(400, f"n: {req.n} choices asked; this server returns one (n=1)", param="n")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens: {max_tokens} is above this server's limit of "
                            f"{limits.max_tokens} new tokens", param="max_tokens")
    tokens = max_tokens or min(recipe.eval.max_new_tokens, limits.max_tokens)
    return Sampling(tokens, 1, req.temperature, req.top_p if req.temperature > 0 else 1.0)


def completion_prompts(req: CompletionRequest, limits: Limits) -> list[str]:
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    check_count(len(prompts), limits.max_texts, "prompt")
    for i, p in enumerate(prompts):
        check_chars(p, limits, f"prompt[{i}]" if len(prompts) > 1 else "prompt")
    return prompts


def chat_context(req: ChatRequest, limits: Limits) -> list[dict]:
    check_count(len(req.messages), limits.max_messages, "messages")
    context = []
    for i, m in enumerate(req.messages):
        text = m.text()
        check_chars(text, limits, f"messages[{i}].content")
        context.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return context


def check_count(n: int, limit: int, param: str) -> None:
    if n == 0:
        raise ApiError(400, f"{param}: empty; give at least one", param=param)
    if n > limit:
        raise ApiError(413, f"{param}: {n} items, above this server's limit of {limit} a request",
                       param=param)


def check_chars(text: str, limits: Limits, param: str) -> None:
    if len(text) > limits.max_text_chars:
        raise ApiError(413, f"{param}: {len(text)} characters, above this server's limit of "
                            f"{limits.max_text_chars}", param=param)


def prompt_ids(pool, adapter, kind: str, content) -> list[int]:
    """Token ids of one prompt (model thread), cut to the run's data.max_length from the front."""
    from peftkit.tasks.causal_lm import chat_prompts, fit

    if kind == "chat":
        return chat_prompts(pool.tokenizer, [content], adapter.recipe)[0]
    return fit(pool.tokenizer(content)["input_ids"], [], adapter.recipe.data.max_length)[0]


def finish(pool, ids: list[int], sampling, stop) -> tuple[str, str]:
    """(text, finish_reason) of one continuation: 'stop' at EOS or a stop string, else 'length'."""
    text = pool.tokenizer.decode(ids, skip_special_tokens=True)
    reason = "length" if len(ids) >= sampling.max_new_tokens else "stop"
    for s in ([stop] if isinstance(stop, str) else stop or []):
        if s and s in text:
            text, reason = text[:text.index(s)], "stop"
    return text, reason


def body(kind: str, model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int) -> dict:
    prefix, obj = ("chatcmpl", "chat.completion") if kind == "chat" else ("cmpl", "text_completion")
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": obj, "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def choice(kind: str, index: int, text: str, reason: str) -> dict:
    if kind == "chat":
        return {"index": index, "message": {"role": "assistant", "content": text},
                "finish_reason": reason, "logprobs": None}
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}
