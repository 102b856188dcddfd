"""The `peftkit` command. Parsing and error display only; the work lives in the modules it calls.

Nothing heavy is imported at module level: `peftkit --help` and `peftkit validate` stay instant.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click

from peftkit import __version__, env, output
from peftkit.cli_errors import friendly_errors


# Commands that live in their own modules, imported only when listed or invoked.
# name -> (module, attribute). Those modules import click only, never torch at import time.
LAZY_COMMANDS = {
    "bench": ("peftkit.commands.bench", "bench"),
    "merge": ("peftkit.commands.merge", "merge"),
    "export": ("peftkit.commands.export", "export"),
    "predict": ("peftkit.commands.predict", "predict"),
    "eval": ("peftkit.commands.evaluate", "eval_cmd"),
    "recipes": ("peftkit.commands.recipes", "recipes"),
    "inspect-data": ("peftkit.commands.inspect_data", "inspect_data"),
    "serve": ("peftkit.commands.serve", "serve"),
    "plan": ("peftkit.commands.plan", "plan"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | {n for n in LAZY_COMMANDS if self._has(n)})

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS and self._has(name):
            import importlib

            module, attr = LAZY_COMMANDS[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    @staticmethod
    def _has(name: str) -> bool:
        import importlib.util

        return importlib.util.find_spec(LAZY_COMMANDS[name][0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="peftkit")
@click.option("-q", "--quiet", is_flag=True, help="print only the result and errors")
@click.option("-v", "--verbose", is_flag=True,
              help="also print what the libraries say (load reports, warnings, raw Trainer logs), "
                   "which otherwise go to the run folder's run.log")
@click.pass_context
def main(ctx, quiet, verbose):
    """Parameter-efficient fine-tuning from YAML recipes: run, bench, merge, predict."""
    if quiet and verbose:
        raise click.UsageError("-q and -v contradict each other; give one")
    before = os.environ.get(output.ENV)
    # a --nproc worker inherits its parent's level; otherwise the flags decide
    if quiet or verbose or before is None:
        output.set_level("quiet" if quiet else "verbose" if verbose else "normal")
    ctx.call_on_close(lambda: restore_level(before))  # one call's flags, not the next one's


def restore_level(before: str | None) -> None:
    if before is None:
        os.environ.pop(output.ENV, None)
    else:
        output.set_level(before)


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--out", "out", type=click.Path(file_okay=False), help="run folder (default: output.dir)")
@click.option("--overwrite", is_flag=True, help="replace a finished run in the output folder")
@click.option("--resume", is_flag=True, help="continue from the last checkpoint in the output folder")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="processes to train in (DDP via torch.distributed.run; gloo on CPU, NCCL on GPUs)")
@friendly_errors
def run(recipe, overrides, out, overwrite, resume, nproc):
    """Train and evaluate RECIPE; OVERRIDES are dotted key=value pairs (train.epochs=1)."""
    from peftkit.recipe import load_recipe

    parsed = load_recipe(recipe, list(overrides))  # a bad recipe fails here, before any launch
    if nproc > 1:
        from peftkit.launch import launch_run

        sys.exit(launch_run(nproc, parsed, recipe, overrides, out, overwrite, resume))
    from peftkit.pipeline import run_recipe
    from peftkit.summary import print_summary

    with quiet_stdout():
        result = run_recipe(parsed, run_dir=out, overwrite=overwrite, resume=resume)
    if env.is_main():  # one summary, not one per process
        print_summary(result)
    from peftkit.health import COLLAPSE_EXIT_CODE, is_collapsed
    from peftkit.launch import launched_by_peftkit

    if is_collapsed(result) and parsed.eval.fail_on_collapse \
            and not launched_by_peftkit():  # --nproc: the parent says it, once
        sys.exit(COLLAPSE_EXIT_CODE)


@contextlib.contextmanager
def quiet_stdout():
    """-q: peftkit's own progress lines go nowhere (result.json keeps what they said); errors and
    warnings are on stderr and stay."""
    if not output.quiet():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


@main.command()
@click.argument("args", nargs=-1, required=True)
@click.option("-o", "--override", "options", multiple=True, help="dotted key=value, repeatable")
@click.option("--data/--no-data", "read_data", default=True, show_default=True,
              help="also read each recipe's data as run does: files per split, rows, labels per "
                   "split, truncation share")
@click.option("--data-only", is_flag=True, help="print only what was detected in the data "
              "(the lines of `peftkit inspect-data`)")
@friendly_errors
def validate(args, options, read_data, data_only):
    """Check RECIPES [KEY=VALUE ...] without loading a model; exit 2 on any problem.

    Overrides are written as for `peftkit run` (train.epochs=1) and apply to every recipe."""
    from peftkit.errors import DataError, RecipeError, UsageError
    from peftkit.recipe import load_recipe

    from pathlib import Path

    def is_override(arg: str) -> bool:
        return "=" in arg and not Path(arg).exists()

    recipes = [a for a in args if not is_override(a)]
    overrides = [*options, *(a for a in args if is_override(a))]
    if not recipes:
        raise UsageError("validate: name at least one recipe file (or shipped recipe) before the "
                         "overrides")
    failed = 0
    for path in recipes:
        try:
            recipe = load_recipe(path, list(overrides))
            if read_data or data_only:
                from peftkit.commands.inspect_data import describe_data

                for line in describe_data(recipe):
                    click.echo(line if data_only else f"  {line}")
            if not data_only:
                click.echo(f"ok: {path}")
        except (RecipeError, DataError, UsageError) as exc:
            failed += 1
            click.secho(f"error: {exc}", fg="red", err=True)
    if failed:
        sys.exit(2)


if __name__ == "__main__":
    main()
