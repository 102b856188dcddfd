"""Run a suite's variants one after another, each through `peftkit.pipeline.run_recipe`.

    DIR/
      suite.yaml          what this folder holds: the suite's source and every variant's overrides
      runs/<variant>/     an ordinary run folder (as `peftkit run` writes it), or error.json
      results.json, results.csv, results.md, pareto.png     rewritten after every variant

A variant whose run folder holds result.json is finished and skipped (unless force). A failing
variant leaves error.json and the rest go on. The reports are rebuilt from the run folders after
every variant, so Ctrl-C at any point leaves them describing every run that finished.
"""

from __future__ import annotations

import shutil
import sys
import time
import traceback
from pathlib import Path

import click

from peftkit import rundir
from peftkit.bench import report
from peftkit.bench.report import ERROR, VARIANT, duration, is_finished, run_dir, settings_of
from peftkit.bench.suite import Suite, Variant
from peftkit.errors import PeftkitError


def run_suite(suite: Suite, out: Path, force: bool = False, echo=click.echo,
              nproc: int = 1) -> list[dict]:
    """Run every unfinished variant; returns the result records (also written to `out`)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PeftkitError(f"cannot create the bench folder {out}: {exc.strerror}") from None
    with rundir.lock_folder(out, f"bench folder {out}"):  # one bench writes a folder at a time
        return run_locked(suite, out, force, echo, nproc)


def run_locked(suite: Suite, out: Path, force: bool, echo, nproc: int) -> list[dict]:
    write_manifest(suite, out)
    todo = [v.name for v in suite.variants if force or not is_finished(run_dir(out, v), v)]
    n, started, durations = len(suite.variants), time.monotonic(), []
    try:
        for i, variant in enumerate(suite.variants, 1):
            head = f"[{i}/{n}] {variant.name}"
            if variant.blocked:  # --tune: its search found no setting to run
                record_failure(variant, run_dir(out, variant), variant.blocked)
                echo(click.style(f"{head}: FAILED: {variant.blocked}", fg="red", bold=True))
                continue
            if variant.name not in todo:
                echo(click.style(f"{head}: finished earlier, skipped (--force reruns it)", fg="cyan"))
                continue
            left = len(todo) - todo.index(variant.name)
            if not force and is_finished(run_dir(out, variant)):
                echo(f"{head}: its settings changed since it last ran: running it again")
            echo(click.style(f"{head}: running · elapsed {duration(time.monotonic() - started)}"
                             f" · {eta(durations, left)}", bold=True))
            t0 = time.monotonic()
            outcome = run_one(variant, run_dir(out, variant), nproc)
            durations.append(time.monotonic() - t0)
            echo(click.style(f"{head}: {outcome} ({duration(durations[-1])})",
                             fg="red" if outcome.startswith("FAILED") else "green", bold=True))
            report.write_reports(suite, out, plot=False)
    finally:  # also on Ctrl-C: the reports then describe every run that finished
        records = report.write_reports(suite, out, plot=True)
    return records


def run_one(variant: Variant, folder: Path, nproc: int = 1) -> str:
    """Train and evaluate one variant; a failure is written to error.json, never raised."""
    from peftkit import pipeline  # looked up at call time, so tests can count the calls

    reset_peak_memory()
    try:
        if nproc > 1:  # its own launch of torch.distributed.run, as `peftkit run --nproc`
            from peftkit.launch import run_in_processes

            result = run_in_processes(variant.recipe, folder, nproc)
        else:
            result = pipeline.run_recipe(variant.recipe, run_dir=folder, overwrite=True)
    except Exception as exc:  # noqa: BLE001 - one broken variant must not stop the suite
        message = error_message(exc)
        if not record_failure(variant, folder, message, type(exc).__name__, traceback.format_exc()):
            return f"FAILED: {message.splitlines()[0]}"  # not ours: nothing is written into it
        return f"FAILED: {message.splitlines()[0] if message else type(exc).__name__}"
    record_settings(variant, folder)
    # A finished variant is never resumed, and its weights are in adapter/ or model/: the Trainer
    # checkpoints (optimizer state, a full copy of the model for some strategies) only fill the disk.
    shutil.rmtree(folder / rundir.CHECKPOINTS, ignore_errors=True)
    metric = result["metric"]
    value = result["test"].get(metric)
    return f"{metric} {value:.4f}" if isinstance(value, (int, float)) else f"{metric} {value}"


def record_failure(variant: Variant, folder: Path, message: str, kind: str = "PeftkitError",
                   trace: str = "") -> bool:
    """error.json and the variant's settings in its folder; False (nothing written) when the
    folder holds something that is not peftkit's."""
    if folder.exists() and rundir.contents(folder) and not rundir.is_ours(folder):
        return False
    rundir.make_run_dir(folder)  # marked: a rerun may replace it
    rundir.write_json(folder / ERROR, {"error": message, "type": kind, "traceback": trace})
    record_settings(variant, folder)
    return True


def record_settings(variant: Variant, folder: Path) -> None:
    rundir.write_json(folder / VARIANT, {"variant": variant.name, "recipe": settings_of(variant)})


def error_message(exc: Exception) -> str:
    from peftkit.errors import PeftkitError

    if isinstance(exc, PeftkitError):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("peftkit.strategies."):
        return f"strategy {exc.name.rsplit('.', 1)[-1]!r} is not implemented in this peftkit ({exc})"
    return f"{type(exc).__name__}: {exc}"


def reset_peak_memory() -> None:
    """Peak memory is read as the process's high-water mark, which a bench shares across its
    variants; reset it so each run reports its own (Linux: writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def write_manifest(suite: Suite, out: Path) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    manifest = {"suite": suite.name, "source": str(Path(suite.source).resolve()),
                "description": suite.description,
                "variants": [{"name": v.name, "group": v.group, "seed": v.seed,
                              "overrides": v.overrides} for v in suite.variants]}
    rundir.atomic_write_text(out / "suite.yaml", yaml.safe_dump(manifest, sort_keys=False))


def eta(durations: list[float], left: int) -> str:
    if not durations:
        return f"{left} to run, time left unknown until one finishes"
    return f"~{duration(sum(durations) / len(durations) * left)} left for {left}"
