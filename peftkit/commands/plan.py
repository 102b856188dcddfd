"""`peftkit plan RECIPE [KEY=VALUE ...]`: parameters, peak memory and time per epoch before
training, without loading the model's weights (peftkit.plan). `--json` for scripts."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from peftkit.cli_errors import friendly_errors


@click.command("plan")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON (peak_memory_mb, "
              "seconds_per_epoch, memory_mb by source, ...)")
@friendly_errors
def plan(recipe, overrides, as_json):
    """Predict RECIPE's parameters, peak memory and time per epoch; say whether it fits here."""
    from peftkit.recipe import load_recipe

    parsed = load_recipe(recipe, list(overrides))
    made = quietly(parsed)
    if as_json:
        click.echo(json.dumps(made.record(), indent=2))
    else:
        for line in describe(made):
            click.echo(line)
    sys.exit(0)


def quietly(recipe):
    """pipeline.build prints what `run` prints about the data; plan shows only the plan."""
    from peftkit import env, output
    from peftkit.pipeline import absolute_paths, build
    from peftkit.plan import make_plan

    env.set_threads(recipe)  # the run's threads: the matmul rate is measured on them
    output.quiet_progress_bars()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        parts = build(absolute_paths(recipe))
    return make_plan(parts)


def describe(plan) -> list[str]:
    from peftkit.plan import summary_lines

    r, m = plan.record(), plan.record()["memory_mb"]
    tb, eb = r["train_batch"], r["eval_batch"]
    rows = [
        ("parameters", f"{plan.total_params:,} total, {plan.trainable_params:,} trainable "
                       f"({100 * plan.trainable_params / plan.total_params:.2f}%)"),
        ("largest batches", f"training {tb['examples']} examples in {tb['rows']} x {tb['width']} "
                            f"tokens; evaluation {eb['rows']} x {eb['width']}"),
        ("baseline", f"{m['baseline']:,.0f} MB  (this process: libraries, data, tokenizer)"),
        ("weights", f"{m['weights']:,.0f} MB  (as loaded, adapters included)"),
        ("gradients", f"{m['gradients']:,.0f} MB"),
        ("optimizer", f"{m['optimizer']:,.0f} MB  (AdamW: two fp32 states per trainable parameter)"),
        ("activations", f"{m['activations']:,.0f} MB  (forward pass at the largest batch, {plan.precision})"),
        ("logits backward", f"{m['logits_backward']:,.0f} MB"),
        ("evaluation", f"{m['evaluation']:,.0f} MB  (largest evaluation batch: its logits and loss, "
                       "or what its layers hold at once)"),
        ("loading", f"{m['loading']:,.0f} MB  (weight file read beside the model)"),
        ("peak", f"{plan.peak_memory_mb:,.0f} MB during {r['peak_phase']}; "
                 f"{plan.available_mb:,.0f} MB available"),
        ("time per epoch", f"~{plan.seconds_per_epoch:,.0f} s over {plan.steps_per_epoch} steps "
                           f"({plan.flops_per_token / 1e6:,.0f} MFLOP per token at "
                           f"{plan.matmul_gflops:,.0f} GFLOP/s measured here; rough: other work "
                           "and other jobs on the machine are not counted)"),
    ]
    return [f"{k:>16}  {v}" for k, v in rows] + [""] + summary_lines(plan)
