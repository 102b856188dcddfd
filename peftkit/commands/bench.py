"""`peftkit bench`: run a suite of recipe variants, then table + Pareto plot; or compare two results.

Imports click only at module level: the work is imported when the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from peftkit.cli_errors import friendly_errors


@click.command()
@click.argument("suite", required=False, type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False),
              help="results folder (default: bench/<suite name>)")
@click.option("--force", is_flag=True, help="rerun variants that already finished in --out")
@click.option("--dry-run", is_flag=True, help="list the variants and their settings; run nothing")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="processes per variant (DDP via torch.distributed.run, as `peftkit run --nproc`)")
@click.option("--tune", is_flag=True,
              help="search each variant's learning rate (and size) with Optuna on the validation "
                   "split, then run the best setting once per seed (the suite's tune: section)")
@click.option("--storage", metavar="URL",
              help="with --tune: the Optuna storage (sqlite:///f.db, postgresql://..., or a "
                   "journal file journal:PATH) several processes may share; default DIR/tune.db")
@click.option("--trials", type=click.IntRange(1), help="with --tune: trials per variant "
              "(default: the suite's tune.trials)")
@click.option("--trials-only", is_flag=True, help="with --tune: run this process's share of the "
              "trials and stop (a worker beside the process that runs the test seeds)")
@click.option("--only", metavar="NAMES", help="run only these variants (comma-separated "
              "variant or group names; a group is every seed of a variant)")
@click.option("--compare", nargs=2, type=click.Path(exists=True), metavar="DIR_A DIR_B",
              help="show per-variant differences between two bench folders, then exit")
@friendly_errors
def bench(suite, overrides, out, force, dry_run, compare, nproc, tune, storage, trials,
          trials_only, only):
    """Run SUITE's variants (default: the built-in quick suite), then write results.json/.csv/.md
    and pareto.png. OVERRIDES (dotted key=value) apply to every variant.

    \b
    peftkit bench                                   # quick suite, demo data, every strategy
    PEFTKIT_DATA_DIR=../shared/data peftkit bench benchmarks/conll2003.yaml
    peftkit bench benchmarks/sst2.yaml data.max_train_samples=500 --out bench/sst2-small
    peftkit bench --compare bench/quick bench/quick-8bit
    peftkit bench --tune                            # quick_tune suite: Optuna search + 3 seeds
    peftkit bench benchmarks/sst2.yaml --only lora-r8,adalora

    Finished variants are skipped on a rerun (--force reruns them); a failing variant is
    recorded with its error and the others still run.
    """
    if compare:
        from peftkit.bench.compare import compare_dirs

        if suite or overrides:
            raise click.UsageError("--compare takes two bench folders and no suite or overrides")
        click.echo(compare_dirs(*compare))
        return
    if suite and "=" in suite and not Path(suite).exists():  # `peftkit bench train.epochs=2`
        suite, overrides = None, (suite, *overrides)

    if not tune and (storage or trials or trials_only):
        raise click.UsageError("--storage, --trials and --trials-only go with --tune")

    from peftkit.bench.suite import load_suite

    parsed = load_suite(suite, list(overrides), tune=tune)
    if only:
        from peftkit.bench.suite import select

        parsed = select(parsed, only)
    if dry_run:
        click.echo(describe(parsed))
        return
    out = Path(out or Path("bench") / parsed.name)
    click.echo(f"bench {parsed.name}: {len(parsed.variants)} variants from {parsed.source} -> {out}")

    from peftkit.bench.report import format_table, read_tuning, summarize
    from peftkit.bench.runner import run_suite

    try:
        if tune:
            from peftkit.bench.tune import tune_suite

            parsed = tune_suite(parsed, out, storage, trials=trials)
            if trials_only:
                click.echo(f"trials done: {out}/trials.csv, {out}/tuning.json")
                return
        records = run_suite(parsed, out, force=force, nproc=nproc)
    except KeyboardInterrupt:
        click.secho(f"\ninterrupted: {out}/results.* describe the variants that finished; rerun "
                    "the same command to run the rest", fg="yellow", err=True)
        sys.exit(130)
    click.echo("\n" + format_table(summarize(records, read_tuning(out))))
    click.echo(f"\n{out}/results.md, results.csv, results.json, pareto.png; runs in {out}/runs/")
    failed = sum(r["status"] == "failed" for r in records)
    if failed:
        click.secho(f"{failed} of {len(parsed.variants)} runs failed (errors in results.md and "
                    f"{out}/runs/<variant>/error.json)", fg="red", err=True)
        sys.exit(1)
    fail = {v.name for v in parsed.variants if v.recipe.eval.fail_on_collapse}
    collapsed = sum(r.get("health") == "collapsed" and r["variant"] in fail for r in records)
    if collapsed:
        from peftkit.health import COLLAPSE_EXIT_CODE

        click.secho(f"{collapsed} of {len(parsed.variants)} runs trained but learned nothing useful "
                    "(marked COLLAPSED in results.md and pareto.png; docs/errors.md)", fg="red", err=True)
        sys.exit(COLLAPSE_EXIT_CODE)


def describe(suite) -> str:
    """One line a variant: what it trains, with which rate, from which recipe, and its overrides."""
    lines = [f"suite {suite.name} ({suite.source}): {len(suite.variants)} variants"]
    if suite.tune:  # --tune: what each group's search will try
        t = suite.tune
        lines.append(f"tune: {t.trials} trials per variant (pruner {t.pruner}, {t.reports} "
                     f"validation reports a trial), then seeds {t.seeds}; lr range "
                     f"{'each strategy' + chr(39) + 's' if t.lr_range is None else t.lr_range}"
                     f"{', size too' if t.size else ''}")
    width = max(len(v.name) for v in suite.variants)
    for variant in suite.variants:
        r = variant.recipe
        source = Path(r.source).name if r.source and r.source != suite.source else "inline base"
        settings = " ".join(f"{k}={value}" for k, value in variant.overrides.items())
        lr = r.train.learning_rate   # a number, or "auto" (found when the variant runs)
        lines.append(f"  {variant.name:<{width}}  {r.strategy_name} lr={lr if isinstance(lr, str) else f'{lr:g}'} "
                     f"seed={r.train.seed} [{source}] {settings}")
    return "\n".join(lines)
