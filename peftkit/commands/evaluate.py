"""`peftkit eval`: metrics of a trained model on a split of any data set. click only at import time."""

from __future__ import annotations

import json

import click

from peftkit.cli_errors import friendly_errors


@click.command("eval")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.argument("overrides", nargs=-1)
@click.option("--data", help="data set name or path (default: the run's own)")
@click.option("--split", help="split to evaluate (default: the run's test split)")
@click.option("--max-samples", type=click.IntRange(1),
              help="first N examples only (default: the run's limit on its own data, else all)")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
@click.option("--trust-remote-code", is_flag=True,
              help="run model code (auto_map *.py) that the folder or its base model ships; "
                   "never done without this flag, whatever the folder's recipe says")
@friendly_errors
def eval_cmd(folder, overrides, data, split, max_samples, as_json, trust_remote_code):
    """Evaluate FOLDER (run, export or merged folder) on --data / --split with the run's metrics.

    The data is read as the run read its own (columns, max_length, tokenizer); OVERRIDES are
    dotted key=value pairs for that (data.tags_column=ner, train.eval_batch_size=128).
    """
    from peftkit.predict import evaluate_folder
    from peftkit.output import route_libraries

    route_libraries()  # load reports and library warnings only with -v

    report = evaluate_folder(folder, data=data, split=split, max_samples=max_samples,
                             overrides=list(overrides), trust_remote_code=trust_remote_code)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{report['folder']} on {report['data']} [{report['split']}], "
               f"{report['examples']} examples ({report['precision']})")
    metric = report["metric"]
    rows = {metric: report["test"].get(metric),
            **{k: v for k, v in report["test"].items()
               if k != metric and not k.endswith(("runtime", "per_second", "epoch", "preparation_time"))}}
    width = max(len(k) for k in rows)
    for k, v in rows.items():
        click.echo(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    if report["health"]["findings"]:
        from peftkit.health import warning_text

        click.secho(warning_text(report["health"]["findings"], "the model's predictions on this "
                                 "data look collapsed", run=False), fg="red", err=True)
