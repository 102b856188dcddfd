"""`peftkit inspect-data RECIPE`: what peftkit makes of a recipe's data, without a model.

Also the data half of `peftkit validate`: the data is read exactly as `run` reads it
(data.readers.read_data), so a recipe that validates has data that loads.

    which file became which split and why ─▶ examples and columns per split (causal LM: the row
    shape) ─▶ label distribution per split, labels that look wrong ─▶ share of examples cut at
    data.max_length (the recipe's tokenizer on the first SAMPLE examples of each split)
"""

from __future__ import annotations

import sys

import click

from peftkit.cli_errors import friendly_errors

SAMPLE = 2000  # examples per split tokenized for the truncation share: a second, not a minute
TOKENIZERS: dict = {}  # validate checks many recipes on one model: load its tokenizer once


def describe_data(recipe, truncation: bool = True) -> list[str]:
    """Lines describing the recipe's data; raises the errors `run` would raise on it."""
    from peftkit.data.labels import format_distribution
    from peftkit.data.readers import check_labels, read_data
    from peftkit.tasks import get_task

    task = get_task(recipe.task)
    raw, report = read_data(recipe, task)
    dist, found = check_labels(raw, recipe, report.where)
    labels = task.label_names(raw, recipe)  # the checks `run` makes next (unseen eval/test labels)
    lines = [*report.lines(), *(f"labels {line}" for line in format_distribution(dist)),
             *(f"warning: {w}" for w in found)]
    if truncation:
        lines.append(truncation_line(recipe, task, raw, labels))
    return lines


def truncation_line(recipe, task, raw, labels) -> str:
    """Share of examples longer than data.max_length, encoded as `run` encodes them."""
    from datasets import DatasetDict

    from peftkit.models import load_tokenizer, source_of

    from datasets import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    sample = DatasetDict({role: ds.select(range(min(len(ds), SAMPLE))) for role, ds in raw.items()})
    source = source_of(recipe)
    key = (source.path, source.gguf_file, recipe.model.revision)
    if key not in TOKENIZERS:  # a GGUF model's tokenizer takes seconds to unpack
        TOKENIZERS[key] = load_tokenizer(source, recipe)
    tokenizer = TOKENIZERS[key]
    shown = is_progress_bar_enabled()
    disable_progress_bars()  # a check, not a run: no tokenizing bars in validate's output
    try:
        _, stats = task.encode(sample, tokenizer, recipe, labels)
    finally:
        if shown:
            enable_progress_bars()
    shares = ", ".join(f"{role} {stats.get(f'truncated_{role}', 0) / len(ds):.1%}"
                       for role, ds in sample.items())
    note = f" (first {SAMPLE:,} examples of each split)" if any(len(ds) > SAMPLE for ds in raw.values()) else ""
    return f"truncated at data.max_length={recipe.data.max_length}: {shares}{note}"


@click.command("inspect-data")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--no-truncation", is_flag=True, help="skip the tokenizer (no truncation share)")
@friendly_errors
def inspect_data(recipe, overrides, no_truncation):
    """Show what RECIPE's data was detected as: files per split, columns, labels, truncation."""
    from peftkit.recipe import load_recipe

    parsed = load_recipe(recipe, list(overrides))
    for line in describe_data(parsed, truncation=not no_truncation):
        click.echo(line)
    sys.exit(0)
