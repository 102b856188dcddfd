"""Running under torchrun / accelerate launch: one writer for the run folder, and `--nproc`.

peftkit never implements its own distribution. The Trainer (through accelerate) wraps the model in
DDP, or FSDP / DeepSpeed from an accelerate config, shards the training batches and gathers the
evaluation outputs (dropping the samples repeated to even out the last batch). What is left here
is keeping the run folder single-writer:

    every rank                                   rank 0 (main)
    ─────────────────────────────────────        ──────────────────────────────────────────
    init(): process group up before the Trainer
    main_first(prepare) · · · waits · · ·  ───▶  check / create / clean the run folder,
          ◀─── state + checkpoint (or the error) choose the checkpoint to resume
    data, model, strategy                        recipe.yaml
    Trainer: train + evaluate (collectives)      metrics.jsonl, checkpoints (the Trainer's rank 0)
    barrier() · · · waits · · · · · · · · · ◀──  adapter/, labels.json, result.json
    return                                       print the summary

Reads the launcher's environment (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE), so it is torch-free at
import time: the CLI uses it for `--nproc`.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from datetime import timedelta

DDP_TIMEOUT = timedelta(seconds=1800)  # TrainingArguments.ddp_timeout's default


def world_size() -> int:
    """Processes of a torchrun / accelerate launch (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The process that writes the run folder and prints (the Trainer's is_world_process_zero)."""
    return rank() == 0


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def _ready() -> bool:
    if world_size() < 2:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init() -> None:
    """Start the process group now, as the Trainer would later (accelerate's PartialState: gloo on
    CPU, NCCL on GPUs, DeepSpeed's when accelerate launch says so), so the ranks can coordinate
    before the Trainer exists. The Trainer then finds it initialised and uses it."""
    if world_size() < 2:
        return
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available(), timeout=DDP_TIMEOUT)
    if not is_main():  # one progress display, not one per process
        import datasets

        datasets.disable_progress_bars()


def main_first(fn):
    """fn() on the main process only; every rank returns its value, or raises its error (on the
    other ranks marked `relayed`, so the CLI prints it once)."""
    if not _ready():
        return fn()
    import torch.distributed as dist

    box = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it, or they hang
            box[0] = ("error", exc if picklable(exc) else RuntimeError(f"{type(exc).__name__}: {exc}"))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        value.relayed = True
        raise value
    return value


def picklable(obj) -> bool:
    """Survives the trip to the other processes (an exception with a custom __init__ may not)."""
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:  # noqa: BLE001 - any failure means "send a plain copy instead"
        return False
    return True


def barrier() -> None:
    """Wait for every rank (here: until the main process has finished writing the run folder)."""
    if _ready():
        import torch.distributed as dist

        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over the ranks (token counts of each rank's share of the batches)."""
    if not _ready():
        return list(values)
    import torch
    import torch.distributed as dist

    device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
              else torch.device("cpu"))  # NCCL reduces CUDA tensors only
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


# ---------------------------------------------------------------- `peftkit run --nproc N`

def launch_command(nproc: int, args: list[str]) -> list[str]:
    """torch's own launcher (torchrun) on this machine. --standalone picks a free port, so two runs
    (or a run and a test) on one machine do not collide on 29500."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "peftkit", *args]


def launch_env(nproc: int) -> dict:
    """torchrun sets OMP_NUM_THREADS=1 for every worker when it is unset; on CPU the cores are the
    workers' to share, so give each its part instead (the user's own setting wins)."""
    env = dict(os.environ)
    env[LAUNCHED_ENV] = "1"  # the workers leave the collapse exit code to this parent (cli.run)
    if "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // nproc))
    return env


def launch(nproc: int, args: list[str]) -> int:
    """Run `peftkit ARGS` in `nproc` processes; returns the launcher's exit code.

    Ctrl-C in a terminal reaches the launcher and its workers directly (one process group), so
    this process only waits; a SIGTERM sent to it alone is passed on to the launcher."""
    import threading

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


LAUNCHED_ENV = "PEFTKIT_LAUNCHED"


def launched_by_peftkit() -> bool:
    return os.environ.get(LAUNCHED_ENV) == "1"


def collapsed(run_dir) -> bool:
    """The finished run in `run_dir` trained but learned nothing useful (peftkit.health)."""
    import json
    from pathlib import Path

    from peftkit import rundir
    from peftkit.health import is_collapsed

    try:
        result = json.loads((Path(run_dir) / rundir.RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return is_collapsed(result)


def launch_run(nproc: int, parsed, recipe: str, overrides, out, overwrite: bool, resume: bool) -> int:
    """`peftkit run ... --nproc N`: the same command, without --nproc, in N processes."""
    from pathlib import Path

    from peftkit import rundir
    from peftkit.errors import UsageError

    if world_size() > 1:
        raise UsageError("--nproc starts its own processes; under torchrun or accelerate launch, "
                         "leave it out (the launcher's --nproc-per-node / --num_processes decides)")
    # The folder rules here first: a refusal (finished run, foreign folder) reads as one line, not
    # through the launcher's report. They are idempotent: the main process applies them again.
    rundir.prepare(Path(out or rundir.default_run_dir(parsed)), overwrite, resume)
    args = ["run", str(recipe), *overrides, *(["--out", str(out)] if out else []),
            *(["--overwrite"] if overwrite else []), *(["--resume"] if resume else [])]
    code = launch(nproc, args)
    if code == 0 and parsed.eval.fail_on_collapse and collapsed(out or rundir.default_run_dir(parsed)):
        from peftkit.health import COLLAPSE_EXIT_CODE

        return COLLAPSE_EXIT_CODE
    return code


def run_in_processes(recipe, run_dir, nproc: int) -> dict:
    """pipeline.run_recipe(recipe, run_dir=run_dir, overwrite=True) in `nproc` processes (what
    `peftkit bench --nproc N` does per variant): the resolved recipe travels as a YAML file, the
    result comes back through the run folder's result.json."""
    import json
    import tempfile
    from pathlib import Path

    import yaml

    from peftkit.errors import PeftkitError
    from peftkit.pipeline import absolute_paths

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
    return json.loads((run_dir / "result.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- sharded engines (accelerate config)

def sharded(trainer) -> bool:
    """FSDP, or DeepSpeed ZeRO-3: each process holds only a shard of every weight. (DDP and
    ZeRO-1/2 keep whole weights in every process.)"""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return getattr(trainer, "is_deepspeed_enabled", False) and getattr(plugin, "zero_stage", 0) == 3


def check_engine(trainer, strategy) -> None:
    """Before training: strategies saved in peftkit's own format read their parameters one by one,
    which FSDP / ZeRO-3 have cut into shards; they are small, so DDP is the engine for them."""
    from peftkit.errors import UsageError

    if sharded(trainer) and not strategy.saved_by_save_pretrained:
        raise UsageError(f"strategy {strategy.name!r} under FSDP / DeepSpeed ZeRO-3 is not "
                         "supported: its adapter is saved from the unsharded parameters. Launch it "
                         "with DDP (recipes/accelerate/ddp_gpu.yaml, or --nproc) or ZeRO-2")


def save_weights(trainer, run_dir, strategy, tokenizer, labels, cfg=None):
    """adapter/ (or model/) written by the main process; returns its path there, None elsewhere.

    Under FSDP / ZeRO-3 every process first takes part in gathering the full state dict (as the
    Trainer's own save_model does: FSDP needs fsdp_state_dict_type FULL_STATE_DICT, ZeRO-3
    stage3_gather_16bit_weights_on_model_save), then the main process writes it."""
    from peftkit import rundir

    if not sharded(trainer):
        return (rundir.save_weights(run_dir, strategy, trainer.model, tokenizer, labels, cfg)
                if is_main() else None)
    engine = trainer.deepspeed if getattr(trainer, "is_deepspeed_enabled", False) else trainer.model
    state_dict = trainer.accelerator.get_state_dict(engine)  # collective: every process
    if not is_main():
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    # the full state dict gathered from every process (save_pretrained takes it as `state_dict`)
    return rundir.save_weights(run_dir, strategy, model, tokenizer, labels,
                               write=lambda folder: model.save_pretrained(str(folder), state_dict=state_dict))
