"""`peftkit merge`: fold a run's adapter (or a weighted combination of several runs' adapters)
into the base and save a plain Hugging Face model folder. click only at import time."""

from __future__ import annotations

import click

from peftkit.cli_errors import friendly_errors
from peftkit.commands.push import before_push, push, push_options

METHODS = ["linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
           "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"]


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(),
              help="folder to write (--format gguf: the .gguf file)")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "onnx", "gguf"]),
              default="safetensors", show_default=True,
              help="safetensors: a transformers model folder; onnx: an ONNX graph for ONNX Runtime "
                   "(token and sequence classification; pip install 'peftkit[onnx]'); gguf: one "
                   "file for llama.cpp (a causal-LM run on a Llama-architecture GGUF base, e.g. "
                   "smollm2-135m)")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "f32", "f16", "q8_0"]),
              help="dtype of the saved weights. safetensors: float32 (default), bfloat16, float16; "
                   "onnx: float32; gguf: f32 (default), f16, q8_0")
@click.option("--weights", help="several runs: comma-separated weights, one per run (default: equal)")
@click.option("--method", type=click.Choice(METHODS), default="linear", show_default=True,
              help="several runs: peft's combination_type. linear mixes the A and B matrices "
                   "(a cheap approximation); cat and svd combine the exact weighted deltas")
@click.option("--density", type=click.FloatRange(0, 1), help="ties / dare / magnitude_prune: share kept")
@click.option("--svd-rank", type=click.IntRange(1), help="svd methods: rank of the result")
@click.option("--overwrite", is_flag=True, help="replace a non-empty --out")
@click.option("--trust-remote-code", is_flag=True,
              help="run (and keep in --out) model code (auto_map *.py) that the folder or its base model ships; "
                   "never done without this flag, whatever the folder's recipe says")
@push_options
@friendly_errors
def merge(runs, out, fmt, dtype, weights, method, density, svd_rank, overwrite, trust_remote_code,
          push_to_hub, private):
    """Merge RUNS (run folders) into one plain Hugging Face model folder at --out.

    One run: its LoRA / DoRA / AdaLoRA / IA3 adapter is folded into the base (reloaded in full
    precision); a full fine-tune is saved as it is. Several runs on the same base and task:
    their adapters are combined with --weights and --method through peft, then folded in.
    --format onnx writes the merged model as an ONNX graph (torch.onnx.export) instead;
    --format gguf: one run's merged weights as a GGUF file with the base GGUF's tokenizer.
    """
    from peftkit.export import merge_run, merge_weighted
    from peftkit.output import route_libraries

    route_libraries()  # load reports and library warnings only with -v
    before_push(push_to_hub, private)
    if fmt == "gguf":
        return merge_to_gguf(runs, out, dtype, weights, overwrite, trust_remote_code, push_to_hub)

    dtype = dtype or "float32"
    if len(runs) == 1 and weights is None:
        folder = merge_run(runs[0], out, dtype=dtype, overwrite=overwrite,
                           trust_remote_code=trust_remote_code, fmt=fmt)
    else:
        folder = merge_weighted(runs, parse_weights(weights), out, method=method, dtype=dtype,
                                overwrite=overwrite, density=density, svd_rank=svd_rank,
                                trust_remote_code=trust_remote_code, fmt=fmt)
    if fmt == "onnx":
        click.echo(f"merged model written to {folder} as an ONNX graph (model.onnx)")
        click.echo(f"run it with onnxruntime (README.md there), or: peftkit predict {folder} \"text\"")
    else:
        click.echo(f"merged model written to {folder}")
        click.echo(f"load it with transformers' from_pretrained, or: peftkit predict {folder} \"text\"")
    push(folder, push_to_hub, private)


def merge_to_gguf(runs, out, dtype, weights, overwrite, trust_remote_code, push_to_hub) -> None:
    from peftkit.export.gguf import merge_gguf

    if len(runs) > 1 or weights is not None:
        raise click.UsageError("--format gguf merges one run; combine several with --format safetensors")
    if push_to_hub:
        raise click.UsageError("--push-to-hub uploads folders; --format gguf writes one file")
    path = merge_gguf(runs[0], out, dtype=dtype, overwrite=overwrite,
                      trust_remote_code=trust_remote_code)
    click.echo(f"merged GGUF written to {path}")
    click.echo(f"run it with llama.cpp: llama-cli -m {path}, or llama_cpp.Llama(model_path=...)")


def parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected numbers separated by commas, e.g. 0.7,0.3",
                                 param_hint="--weights") from None
