"""The machine and the launch this process runs in: the ground floor every other module may use.

    launch      rank(), world_size(), local_world_size(), is_main()   (torchrun / accelerate env)
    cores       usable_cores()      the CPU affinity mask (taskset, containers), not os.cpu_count()
    bf16        cpu_has_fast_bf16() AVX-512 BF16 or AMX in /proc/cpuinfo
    threads     set_threads(recipe) torch's threads: the recipe's, or this process's share of cores

Imports nothing from peftkit, and torch only inside set_threads / default_threads.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")  # Linux; elsewhere unreadable -> no fast bf16


# ---------------------------------------------------------------- the launch

def world_size() -> int:
    """Processes of a torchrun / accelerate launch (1 when not launched); known before the
    Trainer starts them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The process that writes the run folder and prints (the Trainer's is_world_process_zero)."""
    return rank() == 0


def local_world_size() -> int:
    """Processes of the launch on this machine: they share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


# ---------------------------------------------------------------- the hardware

def usable_cores() -> int:
    """Cores this process may run on: the affinity mask where the OS has one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def cpu_has_fast_bf16() -> bool:
    try:
        flags = CPUINFO.read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# ---------------------------------------------------------------- threads

def set_threads(recipe) -> int:
    """torch's thread count for this run, returned for result.json: train.num_threads, else this
    process's fair share of the cores. Two runs that each take every core are ~10x slower
    together than one after the other (their GEMM threads spin against each other), so peftkit
    runs already training on this machine count as sharers."""
    import torch

    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    elif "OMP_NUM_THREADS" not in os.environ:  # processes of one launch share the cores
        others = other_trainings()
        threads = max(1, default_threads() // (local_world_size() * (1 + others)))
        if others and is_main():
            print(f"note: {others} other peftkit run{'s' if others > 1 else ''} training on this "
                  f"machine: using {threads} of {default_threads()} cores (train.num_threads "
                  "sets it; runs one after the other finish sooner)")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def other_trainings() -> int:
    """peftkit run / bench processes on this machine other than this one and its own launch."""
    try:
        import psutil
    except ImportError:
        return 0
    mine = {os.getpid(), os.getppid()}
    count = 0
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        args = proc.info.get("cmdline") or []
        if proc.info["pid"] in mine or proc.info.get("ppid") in mine:
            continue
        if is_training_command(args):
            count += 1
    return count


def is_training_command(args: list[str]) -> bool:
    """`peftkit run|bench ...` or `python -m peftkit run|bench ...` (not torchrun's parent)."""
    for i, arg in enumerate(args):
        if arg == "peftkit" and i > 0 and args[i - 1] == "-m" or arg.endswith("/peftkit"):
            rest = [a for a in args[i + 1:] if not a.startswith("-")]
            return bool(rest) and rest[0] in ("run", "bench")
    return False


@functools.lru_cache(maxsize=1)
def default_threads() -> int:
    """One thread per physical core this process may use: torch's own default (physical cores,
    no hyper-threads: GEMM kernels share a core's FMA units) capped by the CPU affinity mask, which
    torch ignores (taskset, containers). Cached: later set_num_threads calls change what torch says."""
    import torch

    return max(1, min(torch.get_num_threads(), usable_cores()))
