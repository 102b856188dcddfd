"""The FastAPI app: routes, request bounds, and jobs for the batcher.

    GET  /health                 status, base, task, adapters
    GET  /v1/models              the adapters, OpenAI-style (`id` is what `model` takes)
    POST /v1/predict             {"adapter", "texts"} -> `peftkit predict`'s records
    POST /v1/completions         OpenAI completions (causal-lm)
    POST /v1/chat/completions    OpenAI chat completions (causal-lm)
    POST /v1/adapters            {"path", "name"?}: load another run (only with allow_loading)
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError

from peftkit.serve import openai_api
from peftkit.serve.batcher import Batcher, Job
from peftkit.serve.errors import ApiError, describe, install
from peftkit.serve.schemas import AdapterRequest, ChatRequest, CompletionRequest, Limits, PredictRequest

log = logging.getLogger("peftkit.serve")


def create_app(pool, limits: Limits = Limits(), batcher: Batcher | None = None,
               allow_loading: bool = False) -> FastAPI:
    batcher = batcher or Batcher()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="peftkit serve", lifespan=lifespan)
    install(app)
    app.state.pool, app.state.limits, app.state.batcher = pool, limits, batcher

    @app.get("/health")
    async def health():
        return {"status": "ok", "task": pool.task.name, "base": base_name(pool),
                "adapters": list(pool.adapters), "batches": batcher.batches}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(pool, a) for a in pool.adapters.values()]}

    @app.post("/v1/predict")
    async def predict(request: Request):
        req = await read_json(request, PredictRequest, limits)
        adapter = find(pool, req.adapter, "adapter")
        openai_api.check_count(len(req.texts), limits.max_texts, "texts")
        for i, text in enumerate(req.texts):
            openai_api.check_chars(text, limits, f"texts[{i}]")
        job = Job(("predict", pool.batch_key(adapter)), lambda p: run_predict(pool, p),
                  (adapter.name, req.texts), len(req.texts))
        return {"adapter": adapter.name, "predictions": await submit(batcher, job)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await read_json(request, CompletionRequest, limits)
        prompts = openai_api.completion_prompts(req, limits)
        return await generate(pool, batcher, limits, req, "text", prompts, req.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await read_json(request, ChatRequest, limits)
        context = openai_api.chat_context(req, limits)
        return await generate(pool, batcher, limits, req, "chat", [context],
                              req.max_completion_tokens or req.max_tokens)

    @app.post("/v1/adapters")
    async def add_adapter(request: Request):
        if not allow_loading:
            raise ApiError(403, "loading adapters while serving is off; start the server with "
                                "`peftkit serve ... --allow-adapter-loading` to allow it")
        req = await read_json(request, AdapterRequest, limits)
        spec = f"{req.name}={req.path}" if req.name else req.path
        if req.name and req.name in pool.adapters:
            raise ApiError(409, f"an adapter named {req.name!r} is served already", param="name")
        adapter = await batcher.in_model_thread(pool.add, spec)
        log.warning("loaded adapter %s from %s", adapter.name, adapter.folder)
        return model_card(pool, adapter)

    return app


# ---------------------------------------------------------------- helpers

async def read_json(request: Request, schema: type[BaseModel], limits: Limits):
    """The body, refused past limits.max_body_bytes before it is all read, then validated."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise ApiError(413, f"request body of {declared} bytes is above this server's limit of "
                            f"{limits.max_body_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise ApiError(413, f"request body is above this server's limit of "
                                f"{limits.max_body_bytes} bytes")
    try:
        return schema.model_validate_json(bytes(body))
    except ValidationError as exc:
        message, param = describe(exc)
        raise ApiError(400, message, param) from None


def find(pool, name: str, param: str):
    adapter = pool.get(name)
    if adapter is None:
        served = ", ".join(pool.adapters)
        raise ApiError(404, f"{param}: no adapter named {name!r}; this server has: {served}",
                       param=param)
    return adapter


async def submit(batcher: Batcher, job: Job):
    try:
        return await batcher.submit(job)
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - this request fails; the server goes on
        log.exception("request failed")
        raise ApiError(500, f"the model failed on this request ({type(exc).__name__}: {exc}); "
                            "other requests are not affected") from None


def run_predict(pool, payloads: list[tuple[str, list[str]]]) -> list[list[dict]]:
    """Every request's texts in one pool.predict call, then split back per request."""
    names = [name for name, texts in payloads for _ in texts]
    records = pool.predict(names, [t for _, texts in payloads for t in texts])
    out, start = [], 0
    for _, texts in payloads:
        out.append(records[start:start + len(texts)])
        start += len(texts)
    return out


async def generate(pool, batcher, limits, req, kind: str, contents: list, max_tokens):
    adapter = find(pool, req.model, "model")
    if not pool.task.generates:
        raise ApiError(400, f"model: {adapter.name!r} is a {pool.task.name} run, which does not "
                            "generate text; use POST /v1/predict", param="model")
    sampling = openai_api.sampling_for(req, max_tokens, adapter.recipe, limits)
    job = Job(("generate", sampling, pool.batch_key(adapter)),
              lambda p: run_generate(pool, p, sampling),
              (adapter, kind, contents), len(contents))
    rows = await submit(batcher, job)
    choices, used = [], 0
    for i, (n_prompt, ids) in enumerate(rows):
        text, reason = openai_api.finish(pool, ids, sampling, req.stop)
        choices.append(openai_api.choice(kind, i, text.strip() if kind == "chat" else text, reason))
        used += n_prompt
    return openai_api.body(kind, adapter.name, choices, used, sum(len(ids) for _, ids in rows))


def run_generate(pool, payloads, sampling) -> list[list[tuple[int, list[int]]]]:
    """Model thread: tokenize every request's prompts, generate them together, split back."""
    names, prompts, counts = [], [], []
    for adapter, kind, contents in payloads:
        for content in contents:
            names.append(adapter.name)
            prompts.append(openai_api.prompt_ids(pool, adapter, kind, content))
        counts.append(len(contents))
    rows = pool.generate(names, prompts, sampling)
    out, start = [], 0
    for n in counts:
        out.append([(len(prompts[i]), rows[i]) for i in range(start, start + n)])
        start += n
    return out


def base_name(pool) -> str:
    from peftkit.models import source_of
    from peftkit.models_registry import portable_name

    return portable_name(source_of(next(iter(pool.adapters.values())).recipe))


def model_card(pool, adapter) -> dict:
    return {"id": adapter.name, "object": "model", "created": 0, "owned_by": "peftkit",
            "task": pool.task.name, "strategy": adapter.recipe.strategy_impl.name,
            "base": base_name(pool)}
