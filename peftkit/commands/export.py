"""`peftkit export`: write a run's adapter alone (peft format where peft owns the method).
click only at import time."""

from __future__ import annotations

import click

from peftkit.cli_errors import friendly_errors
from peftkit.commands.push import before_push, push, push_options


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(),
              help="folder to write (--format gguf: the .gguf file)")
@click.option("--format", "fmt", type=click.Choice(["hf", "gguf"]), default="hf", show_default=True,
              help="hf: the run's own adapter folder; gguf: a LoRA adapter file that llama.cpp "
                   "loads beside the base GGUF (--lora)")
@click.option("--overwrite", is_flag=True, help="replace a non-empty --out")
@click.option("--trust-remote-code", is_flag=True,
              help="keep model code files (*.py, auto_map) of the run in --out (left out otherwise)")
@push_options
@friendly_errors
def export(run_dir, out, fmt, overwrite, trust_remote_code, push_to_hub, private):
    """Write the adapter of RUN_DIR alone to --out, with a model card.

    peft methods (lora, dora, adalora, ia3, prompt) load with PeftModel.from_pretrained; adapter and
    prefix runs use peftkit's own format. `peftkit predict` and `peftkit eval` accept the folder.
    --format gguf: a LoRA run on a Llama GGUF base as a llama.cpp adapter file.
    """
    from peftkit.export import export_adapter
    from peftkit.output import route_libraries

    route_libraries()  # load reports and library warnings only with -v
    before_push(push_to_hub, private)
    if fmt == "gguf":
        from peftkit.export.gguf import export_gguf

        if push_to_hub:
            raise click.UsageError("--push-to-hub uploads folders; --format gguf writes one file")
        path = export_gguf(run_dir, out, overwrite=overwrite, trust_remote_code=trust_remote_code)
        click.echo(f"llama.cpp adapter written to {path}; load it beside the base GGUF: "
                   f"llama-cli -m BASE.gguf --lora {path}")
        return

    folder = export_adapter(run_dir, out, overwrite=overwrite, trust_remote_code=trust_remote_code)
    click.echo(f"adapter written to {folder} (see its README.md for how to load it)")
    push(folder, push_to_hub, private)
