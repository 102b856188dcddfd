"""`peftkit serve`: an HTTP server for run folders' adapters on one base. click only at import time."""

from __future__ import annotations

import click

from peftkit.cli_errors import friendly_errors


@click.command()
@click.argument("folders", nargs=-1, required=True, metavar="BASE_OR_RUN [RUN ...]")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: the GPU where there is one")
@click.option("--max-texts", type=click.IntRange(1), default=64, show_default=True,
              help="texts (or prompts) per request")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True,
              help="new tokens per completion")
@click.option("--max-body-kb", type=click.IntRange(1), default=1024, show_default=True,
              help="largest request body")
@click.option("--batch-window-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="how long a lone request waits for others to share its forward pass")
@click.option("--max-batch", type=click.IntRange(1), default=64, show_default=True,
              help="texts in one forward pass")
@click.option("--allow-adapter-loading", is_flag=True,
              help="let POST /v1/adapters load another run folder from this machine while serving")
@click.option("--trust-remote-code", is_flag=True,
              help="run model code (auto_map *.py) that the base model ships; never done without it")
@friendly_errors
def serve(folders, host, port, device, max_texts, max_tokens, max_body_kb, batch_window_ms,
          max_batch, allow_adapter_loading, trust_remote_code):
    """Serve the adapters of RUN folders (NAME=PATH names one) on one base model.

    BASE_OR_RUN is a run folder, or the base model the runs share (checked). Endpoints:
    POST /v1/predict, the OpenAI-compatible POST /v1/completions and /v1/chat/completions
    (`model` names the adapter), GET /v1/models, GET /health.
    """
    from peftkit.errors import UsageError

    try:
        import uvicorn

        from peftkit.serve.app import create_app
    except ImportError as exc:
        raise UsageError(f"peftkit serve needs {exc.name}: pip install 'peftkit[serve]'") from None
    from peftkit.output import route_libraries
    from peftkit.serve.batcher import Batcher
    from peftkit.serve.pool import AdapterPool
    from peftkit.serve.schemas import Limits

    route_libraries()
    base, runs = split_base(list(folders))
    pool = AdapterPool.load(runs, trust_remote_code, base)
    place(pool, device)
    limits = Limits(max_body_bytes=max_body_kb * 1024, max_texts=max_texts, max_tokens=max_tokens)
    app = create_app(pool, limits, Batcher(batch_window_ms / 1000, max_batch), allow_adapter_loading)
    click.echo(f"serving {', '.join(pool.adapters)} ({pool.task.name}) on http://{host}:{port}",
               err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def split_base(folders: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is a base model when it is not a run, export or NAME=PATH folder."""
    from pathlib import Path

    from peftkit.errors import UsageError
    from peftkit.rundir import RECIPE
    from peftkit.serve.pool import split_spec

    first = Path(split_spec(folders[0])[1])
    if (first / RECIPE).is_file() or (first / "peftkit.json").is_file():
        return None, folders
    if len(folders) == 1:
        raise UsageError(f"{folders[0]} is not a run folder (no {RECIPE}); give at least one run "
                         "folder to serve (peftkit serve [BASE] RUN [RUN ...])")
    return folders[0], folders[1:]


def place(pool, device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        from peftkit.errors import UsageError

        raise UsageError("--device cuda: no CUDA GPU is visible here; use --device cpu")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        pool.model.to("cuda")
    else:
        from peftkit.env import set_threads

        set_threads(next(iter(pool.adapters.values())).recipe)
