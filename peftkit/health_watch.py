"""The collapse checks at every evaluation during training (peftkit/health.py has the checks).

    Trainer.evaluate (train.eval_every) ──on_evaluate──▶ health.check(validation metrics)
                                                         + health.check_loss(losses so far)
        ──▶ one line when the state changes (ok -> collapsed or back), and the record of every
            evaluation in result.json's health.evaluations

Mid-run findings are notes, not the verdict: a sparse set's first evaluation may well show no
entity yet and recover by the next. The verdict (warning, exit code 3) comes from the test
predictions at the end (pipeline.judge); the evaluations show when the run went wrong, or whether
it was collapsed all along.
"""

from __future__ import annotations

import click
from transformers import TrainerCallback

from peftkit import health


class HealthWatch(TrainerCallback):
    def __init__(self, echo: bool = True):
        self.evaluations: list[dict] = []
        self.echo = echo

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or not any(k.startswith("eval_") for k in metrics):
            return   # the test evaluation after training is judged by pipeline.judge
        losses = [x["loss"] for x in state.log_history if "loss" in x]
        findings = health.check(metrics, "eval") + health.check_loss(losses)
        entry = {"step": state.global_step, "epoch": state.epoch,
                 "status": "collapsed" if findings else "ok", "kinds": [f.kind for f in findings]}
        changed = entry["status"] != (self.evaluations[-1]["status"] if self.evaluations else "ok")
        self.evaluations.append(entry)
        if changed and self.echo and state.is_world_process_zero:
            click.secho(self.line(entry, findings), fg="yellow" if findings else "green", err=True)

    @staticmethod
    def line(entry: dict, findings: list) -> str:
        where = f"health at step {entry['step']} (validation)"
        if not findings:
            return f"{where}: ok again"
        return f"{where}: {'; '.join(f.what for f in findings)} (checked again on test at the end)"
