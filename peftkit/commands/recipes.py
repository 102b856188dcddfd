"""`peftkit recipes` and `peftkit recipes copy NAME [DEST]`: the shipped recipes. click only."""

from __future__ import annotations

import click

from peftkit.cli_errors import friendly_errors


@click.group(invoke_without_command=True)
@click.pass_context
def recipes(ctx):
    """List the recipes shipped with peftkit (copy one with `peftkit recipes copy NAME`)."""
    if ctx.invoked_subcommand is None:
        from peftkit.shipped_recipes import description, names, path_of

        width = max(len(n) for n in names())
        for name in names():
            click.echo(f"{name:<{width}}  {description(path_of(name))}")


@recipes.command()
@click.argument("name")
@click.argument("dest", required=False, type=click.Path())
@click.option("--force", is_flag=True, help="replace DEST if it exists")
@friendly_errors
def copy(name, dest, force):
    """Write shipped recipe NAME to DEST (default: ./NAME.yaml) to edit and run."""
    from peftkit.shipped_recipes import copy as copy_recipe

    target = copy_recipe(name, dest, force)
    click.echo(f"wrote {target}; run it with: peftkit run {target}")
