"""Where a run's peak resident memory happens: ru_maxrss at train begin, after each training step,
after training, after each evaluation, at the end; with and without giving freed heap back at the
phase changes (peftkit/freed_memory.py).

    PEFTKIT_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/phase_peaks.py lora_gen prefix_gen

Cases are benchmarks/plan_check.py's (shipped recipes cut short). Each case runs in a fresh process
per variant (`released`: as shipped; `kept`: release_freed_memory made a no-op), one at a time.
ru_maxrss only grows, so a phase that does not raise it did not reach the peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(case: str, keep: bool) -> None:
    import resource

    sys.path.insert(0, str(HERE))
    import plan_check
    from transformers import TrainerCallback

    from peftkit import freed_memory, pipeline
    from peftkit.recipe import load_recipe

    if keep:
        freed_memory.release_freed_memory = lambda: None
    marks: list[tuple[str, float]] = []

    def mark(label: str) -> None:
        marks.append((label, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))

    class Marks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            mark("train begin")

        def on_step_end(self, args, state, control, **kwargs):
            mark(f"step {state.global_step}")

        def on_train_end(self, args, state, control, **kwargs):
            mark("train end")

        def on_evaluate(self, args, state, control, **kwargs):
            mark("evaluation")

    path, overrides = plan_check.CASES[case]
    result = pipeline.run_recipe(load_recipe(path, overrides), run_dir=tempfile.mkdtemp(),
                                 overwrite=True, callbacks=[Marks()])
    mark("end")
    print("RESULT " + json.dumps({"marks": marks, "plan": (result.get("plan") or {}).get("peak_memory_mb"),
                                  "peak": result["peak_memory_mb"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--child", choices=["released", "kept"], help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        return child(a.cases[0], keep=a.child == "kept")
    print("| case | freed heap | train begin | training peak | after evaluation (peak) | plan |")
    print("|---|---|--:|--:|--:|--:|")
    for case in a.cases:
        for variant in ("kept", "released"):
            out = subprocess.run([sys.executable, __file__, case, "--child", variant],
                                 capture_output=True, text=True).stdout
            line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(f"| {case} | {variant} | failed | | | |", flush=True)
                continue
            r = json.loads(line[7:])
            marks = dict(r["marks"])
            train = max(v for k, v in r["marks"] if k.startswith("step"))
            print(f"| {case} | {variant} | {marks['train begin']:,.0f} | {train:,.0f} | "
                  f"{r['peak']:,.0f} | {r['plan']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
