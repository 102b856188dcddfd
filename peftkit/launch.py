"""`peftkit run --nproc N` and `peftkit bench --nproc N`: the same run in N processes.

    parent (this module)                          N workers (torch.distributed.run)
    ──────────────────────────────────────        ──────────────────────────────────────────
    folder rules first (a refusal: one line) ──▶  peftkit run RECIPE --out DIR ...
    wait; SIGTERM passed on to the launcher       peftkit.distributed: one writer per folder
    collapse exit code, once                 ◀──  result.json

Torch-free at import time: the CLI imports it for `--nproc`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

from peftkit import env, rundir
from peftkit.errors import PeftkitError, UsageError
from peftkit.health import COLLAPSE_EXIT_CODE, is_collapsed
from peftkit.pipeline import absolute_paths

LAUNCHED_ENV = "PEFTKIT_LAUNCHED"


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """torch's own launcher (torchrun) on this machine. --standalone picks a free port, so two runs
    (or a run and a test) on one machine do not collide on 29500."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "peftkit", *args]


def launch_env(nproc: int) -> dict:
    """torchrun sets OMP_NUM_THREADS=1 for every worker when it is unset; on CPU the cores are the
    workers' to share, so give each its part instead (the user's own setting wins)."""
    environ = dict(os.environ)
    environ[LAUNCHED_ENV] = "1"  # the workers leave the collapse exit code to this parent (cli.run)
    if "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = str(max(1, env.usable_cores() // nproc))
    return environ


def launch(nproc: int, args: list[str]) -> int:
    """Run `peftkit ARGS` in `nproc` processes; returns the launcher's exit code.

    Ctrl-C in a terminal reaches the launcher and its workers directly (one process group), so
    this process only waits; a SIGTERM sent to it alone is passed on to the launcher."""
    proc = subprocess.Popen(launch_command(nproc, args), env=launch_env(nproc))
    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's
        return proc.wait()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def launched_by_peftkit() -> bool:
    return os.environ.get(LAUNCHED_ENV) == "1"


def collapsed(run_dir) -> bool:
    """The finished run in `run_dir` trained but learned nothing useful (peftkit.health)."""
    try:
        result = json.loads((Path(run_dir) / rundir.RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return is_collapsed(result)


def launch_run(nproc: int, parsed, recipe: str, overrides, out, overwrite: bool, resume: bool) -> int:
    """`peftkit run ... --nproc N`: the same command, without --nproc, in N processes."""
    if env.world_size() > 1:
        raise UsageError("--nproc starts its own processes; under torchrun or accelerate launch, "
                         "leave it out (the launcher's --nproc-per-node / --num_processes decides)")
    # The folder rules here first: a refusal (finished run, foreign folder) reads as one line, not
    # through the launcher's report. They are idempotent: the main process applies them again.
    run_dir = Path(out or rundir.default_run_dir(parsed))
    with rundir.claim(run_dir):  # released before the launch: the main child takes it for the run
        rundir.prepare(run_dir, overwrite, resume)
    args = ["run", str(recipe), *overrides, *(["--out", str(out)] if out else []),
            *(["--overwrite"] if overwrite else []), *(["--resume"] if resume else [])]
    code = launch(nproc, args)
    if code == 0 and parsed.eval.fail_on_collapse and collapsed(run_dir):
        return COLLAPSE_EXIT_CODE
    return code


def run_in_processes(recipe, run_dir, nproc: int) -> dict:
    """pipeline.run_recipe(recipe, run_dir=run_dir, overwrite=True) in `nproc` processes (what
    `peftkit bench --nproc N` does per variant): the resolved recipe travels as a YAML file, the
    result comes back through the run folder's result.json."""
    run_dir = Path(run_dir)
    resolved = absolute_paths(recipe)  # local model / data paths no longer depend on the folder
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="peftkit-", delete=False) as f:
        yaml.safe_dump(resolved.to_dict(), f, sort_keys=False)
    try:
        code = launch(nproc, ["run", f.name, "--out", str(run_dir), "--overwrite"])
    finally:
        os.unlink(f.name)
    if code != 0:
        raise PeftkitError(f"the {nproc}-process run exited with code {code}; its error is printed "
                           "above")
    return json.loads((run_dir / rundir.RESULT).read_text(encoding="utf-8"))
