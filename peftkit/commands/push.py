"""The --push-to-hub / --private options that `peftkit export` and `peftkit merge` share.
click only at import time; the work is peftkit.export.hub's."""

from __future__ import annotations

import click


def push_options(fn):
    """Add --push-to-hub REPO and --private to a command (parameters push_to_hub, private)."""
    fn = click.option("--private", is_flag=True,
                      help="with --push-to-hub: create the repo private (an existing repo keeps "
                           "its visibility)")(fn)
    return click.option("--push-to-hub", metavar="REPO",
                        help="then upload the folder to this Hugging Face model repo (created if "
                             "missing); token from HF_TOKEN or `hf auth login`, endpoint from "
                             "HF_ENDPOINT")(fn)


def before_push(push_to_hub: str | None, private: bool) -> None:
    """Called first: the checks that need no network, so a bad repo id fails before the work."""
    if private and not push_to_hub:
        raise click.UsageError("--private applies to --push-to-hub REPO; give both or neither")
    if push_to_hub:
        from peftkit.export.hub import check_push

        check_push(push_to_hub)


def push(folder, push_to_hub: str | None, private: bool) -> None:
    """Called last, once the folder is complete."""
    if push_to_hub:
        from peftkit.export.hub import push_folder

        url = push_folder(folder, push_to_hub, private=private)
        click.echo(f"pushed to {push_to_hub}: {url}")
