"""`peftkit serve`: one base model, every given run's adapter, over HTTP (issue 20, part 3).

    pool.py        the base and its adapters; predict / generate with one adapter name per input
    batcher.py     requests arriving together -> one forward pass (per batch key)
    app.py         FastAPI routes; schemas.py the request bodies and limits; errors.py the 4xx/5xx
    openai_api.py  /v1/completions and /v1/chat/completions in OpenAI's shapes

Needs the `serve` extra (fastapi, uvicorn); nothing here is imported by the rest of peftkit.
"""
