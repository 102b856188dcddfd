"""`train.learning_rate: auto`: the learning rate found on the user's data before training (issue 15).

    training split ──seeded split──▶ held-back examples (scored, never trained on) + search slice
    candidates: the strategy's range (Strategy.lr_range), 5 log-spaced rates
      sweep  every candidate trains the same few steps from the same fresh model; each is scored on
             the held-back examples by two losses: the plain loss (how much it learned) and the
             class-balanced loss (Task.probe_metrics: every gold class weighs the same). A rate is
             admissible when it lowered the plain loss without raising the balanced loss more than
             DAMAGE above the untrained model's; the admissible rate with the lowest plain loss wins.
      range  one run whose rate grows geometrically through the range (Smith 2017's range test),
             held-back loss evaluated along the way; the rate of the lowest loss / 4
    ──▶ the chosen rate trains the real run; result.json records every probe and the cost

Why two losses (measured, benchmarks/RESULTS.md#learning-rate-auto): on CoNLL-2003 with one entity
type kept (98% of tokens O), LoRA at 2e-3 ends at entity F1 0.00 and at 5e-4 at 0.60. Within the
search budget no probe finds a single entity, and the plain loss prefers the highest rate (it
learns "always O" fastest); the balanced loss shows what that costs: the entity tokens' loss jumps
at 2e-3 within a handful of steps and not at 7e-4. A rate that sacrifices the rare classes early
is the one that collapses.

Every probe goes through the same Trainer path as a real run (`peftkit.train.build_trainer`, no
checkpoints), on a fresh model built exactly like the real one (same seed, same head init). The
search spends at most SEARCH_SHARE of the run's training, counted in example passes (an evaluated
example counted as a trained one: on CPU the padded evaluation batches cost about that);
result.json records the measured share of time. Deterministic for a seed.

Written here rather than taken from a library: Optuna's samplers answer "which settings next",
not "which rate keeps the rare classes", and torch-lr-finder's LRFinder wants a bare model,
optimizer and criterion, where peftkit's models, packed batches and callbacks live in a Trainer.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from peftkit.rundir import LR_SEARCH

SEARCH_SHARE = 0.15   # of the run's training example passes (issue 15: "at most ~15%")
EVAL_COST = 1.0       # an evaluated example, in trained-example passes (padded batches on CPU)
DAMAGE = 0.05         # a rate may raise the held-back balanced loss this much (relative), no more
MIN_STEPS = 6         # probes shorter than this miss the damage (3-step probes let an adapter rate
                      # through that collapsed the run): fewer candidates instead
RANGE_DIVISOR = 4.0   # range test: the chosen rate is the best-loss rate / RANGE_DIVISOR
FILE = LR_SEARCH       # in the run folder, so that --resume continues at the same rate


@dataclass
class Probe:
    learning_rate: float
    steps: int
    loss: float | None = None           # held-back loss (None: diverged)
    balanced_loss: float | None = None  # held-back loss averaged over gold classes
    note: str = ""


@dataclass
class Search:
    method: str
    range: tuple[float, float]
    heldback: int
    trained_on: int
    budget_passes: int
    probe_batch_size: int
    used_passes: int = 0
    seconds: float = 0.0
    chosen: float | None = None
    reason: str = ""
    probes: list[Probe] = field(default_factory=list)

    def record(self) -> dict:
        return asdict(self)


def held_back(train, seed: int, budget: int):
    """(search slice, held-back examples): 10% of the training split, 32 to 128 examples, and no
    more than an eighth of the search budget (four evaluations of it cost half the budget)."""
    n = len(train)
    k = min(128, max(32, n // 10), max(32, budget // 8))
    if n < 2 * k:
        k = n // 3
    shuffled = train.shuffle(seed=seed)
    return shuffled.select(range(k, n)), shuffled.select(range(k))


def candidates(low: float, high: float, n: int = 5) -> list[float]:
    """n rates, geometrically spaced from low to high inclusive, rounded to 2 significant digits."""
    ratio = (high / low) ** (1 / (n - 1))
    return [float(f"{low * ratio ** i:.2g}") for i in range(n)]


def probe_batch(batch_size: int) -> int:
    """Probes train with a quarter of the run's batch: four times the optimizer steps for the same
    cost, and a rate's damage shows per step. Conservative: under Adam a step's size does not grow
    with the batch, and a rate that is safe for noisy small batches is safe for larger ones."""
    return max(4, batch_size // 4)


def budget_passes(total_steps: int, examples_per_step: int) -> int:
    return int(SEARCH_SHARE * total_steps * examples_per_step)


# ---------------------------------------------------------------- the two methods

def sweep(probe, lrs: list[float], budget: int, per_step: int, heldback: int, search: Search) -> float:
    """Every candidate s steps; the admissible one (module docstring) with the lowest plain loss."""
    def steps_each(n: int) -> int:  # n probes and n + 1 evaluations (+ the untrained model's)
        return int((budget - (n + 1) * heldback * EVAL_COST) // (n * per_step))

    steps = steps_each(len(lrs))
    if steps < MIN_STEPS:  # a rate's damage to the rare classes shows after a few steps, not at once
        lrs = lrs[::2]                                 # 3 candidates, longer probes
        steps = steps_each(len(lrs))
    if steps < 3:
        raise TooShort(budget, per_step)
    start = probe(0.0, 0)
    search.probes.append(start)
    tried = [probe(lr, steps) for lr in lrs]
    search.probes += tried
    for p in tried:
        p.note = p.note or verdict(p, start)
    distrust_above_damage(tried)
    good = [p for p in tried if p.note == "admissible"]
    if not good:
        finite = [p for p in tried if p.loss is not None]
        if not finite:
            raise AllDiverged(lrs)
        search.reason = ("no rate kept the rare classes' held-back loss; the lowest rate, the least "
                         "damaging")
        return finite[0].learning_rate
    winner = min(good, key=lambda p: p.loss)
    search.reason = (f"lowest held-back loss ({winner.loss:.4f}) among the rates that did not raise "
                     f"the class-balanced loss (untrained {start.balanced_loss:.4f}), {steps} steps each")
    return winner.learning_rate


def verdict(p: Probe, start: Probe) -> str:
    if p.loss is None or p.balanced_loss is None:
        return "diverged"
    if p.balanced_loss > start.balanced_loss * (1 + DAMAGE):
        return "rare classes lost"
    if p.loss >= start.loss:
        return "learned nothing"
    return "admissible"


def distrust_above_damage(tried: list[Probe]) -> None:
    """Damage grows with the rate, so a rate above one that lost the rare classes (or diverged)
    and still looks admissible is a fluke of its probe: measured on SST-2 at 90/10 classes, prompt
    tuning lost them from 7.2e-3 up, 0.1 alone passed (held-back loss 1% lower) and the run at 0.1
    ended predicting one class."""
    damaged = False
    for p in sorted(tried, key=lambda p: p.learning_rate):
        damaged = damaged or p.note in ("rare classes lost", "diverged")
        if damaged and p.note == "admissible":
            p.note = "above a damaging rate"


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
    budget = budget_passes(total_steps, recipe.train.batch_size
                           * recipe.train.gradient_accumulation_steps * world_size)
    batch = probe_batch(recipe.train.batch_size)
    per_step = batch * recipe.train.gradient_accumulation_steps * world_size
    train, heldback = held_back(build.encoded["train"], recipe.train.seed, budget)
    search = Search(method=method, range=(low, high), heldback=len(heldback), trained_on=len(train),
                    budget_passes=budget, probe_batch_size=batch)
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
        echo(f"  lr {p.learning_rate:<8.2g} {p.steps:>4} steps  held-back loss {fmt(p.loss)}  "
             f"balanced {fmt(p.balanced_loss)}{'  ' + p.note if p.note else ''}")
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
                                batch_size=self.search.probe_batch_size,
                                lr_scheduler=schedule, warmup=0.1 if schedule != "constant" else 0.0,
                                eval_every="steps" if eval_every else "no", eval_steps=eval_every,
                                logging_steps=max(1, steps // 4), report_to=[])
        recipe = dataclasses.replace(self.recipe, train=t)
        model, callbacks = self.build.fresh_model()
        encoded = {"train": self.train, "eval": self.heldback}
        return build_trainer(recipe, model, self.build.tokenizer, self.build.task, encoded,
                             self.build.labels, self.work_dir, self.build.precision, callbacks,
                             probe=True)

    def run(self, lr: float, steps: int) -> Probe:
        """lr 0 / steps 0: the untrained model's held-back losses (the admissibility baseline)."""
        from peftkit.callbacks import TrainingDiverged

        probe = Probe(lr, steps)
        trainer = self.trainer(lr or 1e-9, max(1, steps), "constant_with_warmup")
        try:
            if steps:
                trainer.train()
        except TrainingDiverged:
            probe.note = "diverged"
            return self.spent(probe, steps, 0)
        metrics = trainer.evaluate(self.heldback, metric_key_prefix="eval")  # causal LM: loss only
        loss = metrics.get("eval_loss")
        balanced = metrics.get("eval_balanced_loss", loss)
        if loss is not None and math.isfinite(loss) and balanced is not None and math.isfinite(balanced):
            probe.loss, probe.balanced_loss = loss, balanced
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
        self.spent(Probe(low, steps), steps, len(ramp.points))
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
        self.points.append(Probe(float(f"{lr:.3g}"), state.global_step, loss))
