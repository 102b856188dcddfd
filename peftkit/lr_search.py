"""`train.learning_rate: auto`: the learning rate found on the user's data before training (issue 15).

    training split ──seeded split──▶ held-back examples (scored, never trained on) + search slice
    candidates: the strategy's range (Strategy.lr_range), log-spaced
      sweep  successive halving: every candidate trains a few steps from the same start, the best
             third trains 3x as long; scored on the held-back examples by the task's metric,
             ties (within noise) broken by held-back loss
      range  one run whose learning rate grows geometrically through the range (Smith 2017's range
             test), held-back loss evaluated along the way; the rate of the lowest loss / 4
    ──▶ the chosen rate trains the real run; result.json records candidates, scores and cost

Every probe run goes through the same Trainer path as a real run (`peftkit.train.build_trainer`),
on a fresh model built exactly like the real one (same seed, same head init). The search spends at
most SEARCH_SHARE of the run's training budget, counted in example passes (an evaluated example
costs a third of a trained one: forward only). Deterministic for a seed.

Written here rather than taken from a library: Optuna's pruners would run a sweep, but a
five-point grid with one halving needs no study; torch-lr-finder's LRFinder wants a bare model,
optimizer and criterion, where peftkit's models, packed batches and callbacks live in a Trainer.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback

SEARCH_SHARE = 0.15   # of the run's training example passes (issue 15: "at most ~15%")
EVAL_COST = 1 / 3     # an evaluated example costs about a third of a trained one
TIE = 0.01            # metric differences below this are noise on a few hundred examples
RANGE_DIVISOR = 4.0   # range test: the chosen rate is the best-loss rate / RANGE_DIVISOR
FILE = "lr_search.json"


@dataclass
class Probe:
    learning_rate: float
    steps: int
    rung: int
    score: float | None = None     # the task metric on the held-back examples (None: diverged)
    loss: float | None = None      # held-back loss
    note: str = ""


@dataclass
class Search:
    method: str
    range: tuple[float, float]
    heldback: int
    trained_on: int
    budget_passes: int
    used_passes: int = 0
    seconds: float = 0.0
    chosen: float | None = None
    reason: str = ""
    probes: list[Probe] = field(default_factory=list)

    def record(self) -> dict:
        return asdict(self)


def held_back(train, seed: int):
    """(search slice, held-back examples): 10% of the training split, 32 to 192 examples."""
    n = len(train)
    k = min(192, max(32, n // 10))
    if n < 2 * k:
        k = n // 3
    shuffled = train.shuffle(seed=seed)
    return shuffled.select(range(k, n)), shuffled.select(range(k))


def candidates(low: float, high: float, n: int = 5) -> list[float]:
    """n rates, geometrically spaced from low to high inclusive, rounded to 2 significant digits."""
    ratio = (high / low) ** (1 / (n - 1))
    return [float(f"{low * ratio ** i:.2g}") for i in range(n)]


def budget_passes(total_steps: int, examples_per_step: int) -> int:
    return int(SEARCH_SHARE * total_steps * examples_per_step)


# ---------------------------------------------------------------- the two methods

def sweep(probe, lrs: list[float], budget: int, per_step: int, heldback: int, search: Search) -> float:
    """Successive halving: rung 0 trains every candidate s steps, rung 1 the best third 3s steps."""
    keep = max(1, math.ceil(len(lrs) / 3))
    rounds = len(lrs) + 3 * keep                  # rung sizes in units of s steps
    evals = (len(lrs) + keep) * heldback * EVAL_COST
    steps = int((budget - evals) // (rounds * per_step))
    if steps < 2:                                 # too short for two rungs: one rung of 3 rates
        lrs = lrs[::2]
        keep, rounds = 0, len(lrs)
        steps = int((budget - len(lrs) * heldback * EVAL_COST) // (rounds * per_step))
    if steps < 2:
        raise TooShort(budget, per_step)
    rung = [probe(lr, steps, 0) for lr in lrs]
    search.probes += rung
    if keep:
        best = sorted((p for p in rung if p.score is not None), key=rank)[:keep]
        final = [probe(p.learning_rate, 3 * steps, 1) for p in best]
        search.probes += final
        rung = final or rung
    done = [p for p in rung if p.score is not None]
    if not done:
        raise AllDiverged([p.learning_rate for p in rung])
    winner = sorted(done, key=rank)[0]
    search.reason = (f"best held-back score after {winner.steps} steps "
                     f"({winner.score:.4f}, loss {winner.loss:.4f})")
    return winner.learning_rate


def rank(p: Probe) -> tuple:
    """Higher score first; scores within TIE of each other count as equal, then lower loss wins."""
    return (-round(p.score / TIE), p.loss if p.loss is not None else math.inf)


def range_test(probe_range, low: float, high: float, budget: int, per_step: int, heldback: int,
               search: Search) -> float:
    """One run with the rate growing geometrically from low to high; 8 held-back evaluations."""
    evals = 8
    steps = int((budget - evals * heldback * EVAL_COST) // per_step)
    if steps < evals:
        raise TooShort(budget, per_step)
    points = probe_range(low, high, steps, max(1, steps // evals))
    search.probes += points
    finite = [p for p in points if p.loss is not None and math.isfinite(p.loss)]
    if not finite:
        raise AllDiverged([low, high])
    best = min(finite, key=lambda p: p.loss)
    chosen = float(f"{max(low, best.learning_rate / RANGE_DIVISOR):.2g}")
    search.reason = (f"held-back loss lowest ({best.loss:.4f}) at {best.learning_rate:.2g}; "
                     f"a quarter of it")
    return chosen


class TooShort(Exception):
    def __init__(self, budget: int, per_step: int):
        super().__init__(f"the run is too short for a search within {SEARCH_SHARE:.0%} of its "
                         f"training ({budget} example passes, {per_step} per step)")


class AllDiverged(Exception):
    def __init__(self, lrs):
        super().__init__(f"every probed learning rate diverged ({', '.join(f'{x:g}' for x in lrs)})")


# ---------------------------------------------------------------- running probes

def find_learning_rate(recipe, build, total_steps: int, work_dir: Path, echo=print,
                       world_size: int = 1) -> Search:
    """Search and return the record; `build` is the pipeline's Build (fresh models, data, task)."""
    strategy = build.strategy
    low, high = strategy.lr_range
    method = recipe.train.lr_search
    if method == "auto":
        method = strategy.lr_search
    per_step = recipe.train.batch_size * recipe.train.gradient_accumulation_steps * world_size
    train, heldback = held_back(build.encoded["train"], recipe.train.seed)
    search = Search(method=method, range=(low, high), heldback=len(heldback), trained_on=len(train),
                    budget_passes=budget_passes(total_steps, per_step))
    runner = ProbeRunner(recipe, build, train, heldback, work_dir, search, per_step)
    echo(f"learning rate: searching {low:g}..{high:g} ({method}) on {len(train)} training examples, "
         f"scored on {len(heldback)} held-back ones, within {SEARCH_SHARE:.0%} of the run")
    start = time.perf_counter()
    try:
        if method == "range":
            search.chosen = range_test(runner.range_run, low, high, search.budget_passes, per_step,
                                       len(heldback), search)
        else:
            search.chosen = sweep(runner.run, candidates(low, high), search.budget_passes, per_step,
                                  len(heldback), search)
    except (TooShort, AllDiverged) as exc:
        search.chosen, search.reason = strategy.default_lr, f"{exc}; the strategy's default rate"
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    search.seconds = time.perf_counter() - start
    for p in search.probes:
        echo(f"  lr {p.learning_rate:<8.2g} {p.steps:>4} steps  score {fmt(p.score)}  "
             f"held-back loss {fmt(p.loss)}{'  ' + p.note if p.note else ''}")
    echo(f"learning rate: {search.chosen:g} ({search.reason}; {search.seconds:.0f} s)")
    return search


def fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) and math.isfinite(x) else "  --  "


class ProbeRunner:
    """Short training runs of fresh models on the search slice, scored on the held-back examples."""

    def __init__(self, recipe, build, train, heldback, work_dir: Path, search: Search, per_step: int):
        self.recipe, self.build, self.train, self.heldback = recipe, build, train, heldback
        self.work_dir, self.search = Path(work_dir), search
        self.work_dir.mkdir(parents=True, exist_ok=True)  # the probes' metrics.jsonl
        self.per_step = per_step

    def trainer(self, lr: float, steps: int, schedule: str, eval_every: int | None = None):
        import dataclasses

        from peftkit.train import build_trainer

        t = dataclasses.replace(self.recipe.train, learning_rate=lr, max_steps=steps,
                                lr_scheduler=schedule, warmup=0.1 if schedule != "constant" else 0.0,
                                eval_every="steps" if eval_every else "no", eval_steps=eval_every,
                                logging_steps=max(1, steps // 4), report_to=[])
        recipe = dataclasses.replace(self.recipe, train=t)
        model, callbacks = self.build.fresh_model()
        encoded = {"train": self.train, "eval": self.heldback}
        return build_trainer(recipe, model, self.build.tokenizer, self.build.task, encoded,
                             self.build.labels, self.work_dir, self.build.precision, callbacks,
                             probe=True)

    def run(self, lr: float, steps: int, rung: int) -> Probe:
        from peftkit.callbacks import TrainingDiverged

        probe = Probe(lr, steps, rung)
        trainer = self.trainer(lr, steps, "constant_with_warmup")
        try:
            trainer.train()
        except TrainingDiverged:
            probe.note = "diverged"
            return self.spent(probe, steps, 0)
        metrics = trainer.evaluate(self.heldback, metric_key_prefix="eval")  # causal LM: loss only
        probe.loss = metrics.get("eval_loss")
        balanced = metrics.get("eval_balanced_loss", probe.loss)
        probe.score = -balanced if balanced is not None else None
        if probe.score is not None and not math.isfinite(probe.score):
            probe.score, probe.note = None, "non-finite"
        return self.spent(probe, steps, 1)

    def range_run(self, low: float, high: float, steps: int, eval_every: int) -> list[Probe]:
        from peftkit.callbacks import TrainingDiverged

        trainer = self.trainer(low, steps, "constant", eval_every)
        ramp = GeometricRamp(low, high, steps)
        trainer.add_callback(ramp)
        try:
            trainer.train()
        except TrainingDiverged:
            pass  # the rates past the divergence are the ones a range test is meant to find
        self.spent(Probe(low, steps, 0), steps, len(ramp.points))
        return ramp.points

    def spent(self, probe: Probe, steps: int, evals: int):
        self.search.used_passes += int(steps * self.per_step + evals * len(self.heldback) * EVAL_COST)
        return probe


def geometric_lr(low: float, high: float, steps: int, step: int) -> float:
    return low * (high / low) ** (step / max(1, steps - 1))


class GeometricRamp(TrainerCallback):
    """Sets the optimizer's rate before every step (the Trainer's constant schedule would hold it)
    and records the held-back loss of every evaluation with the rate it was reached at."""

    def __init__(self, low: float, high: float, steps: int):
        self.low, self.high, self.steps = low, high, steps
        self.points: list[Probe] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        lr = geometric_lr(self.low, self.high, self.steps, state.global_step)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        lr = geometric_lr(self.low, self.high, self.steps, max(0, state.global_step - 1))
        loss = (metrics or {}).get("eval_loss")
        self.points.append(Probe(float(f"{lr:.3g}"), state.global_step, 0, None, loss))
