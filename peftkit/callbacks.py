"""Trainer callbacks that make a run stoppable, resumable and safe against divergence.

    step end ──▶ NonFiniteGuard    NaN/inf weights or loss: stop before the next checkpoint,
                                   keep the last good one, say why (learning rate?)
             ──▶ SignalStop        Ctrl-C / SIGTERM: finish the step, checkpoint, stop cleanly
    epoch begin ▶ SeededDataOrder  batch order of epoch e = f(data_seed, e): a resumed run
                                   sees the same batches as an uninterrupted one
    save ───────▶ CheckpointExtras state the Trainer does not checkpoint (the strategy's)
    epoch end ──▶ CheckpointExtras also checkpoint at epoch ends when saving every N steps

Everything a run needs to continue bit-for-bit lives in `checkpoints/checkpoint-N/`: the Trainer
writes weights, optimizer, scheduler and RNG states and (last) trainer_state.json; we add
`peftkit_state.pt`, then SHA256SUMS of every binary file (written last: a checkpoint without
it, or whose files differ from it, is not resumed from).
"""

from __future__ import annotations

import math
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from peftkit.errors import PeftkitError
from peftkit.strategies import get_strategy
from peftkit.strategies.base import Strategy

EXTRAS_FILE = "peftkit_state.pt"


class TrainingDiverged(PeftkitError):
    """Loss or weights became NaN/inf. The recipe is the fix (learning rate, precision): exit 2."""

    exit_code = 2


class RunInterrupted(KeyboardInterrupt):
    """Stopped by a signal after a checkpoint was written; exit 128 + signal number. A
    KeyboardInterrupt, so that `except Exception` (bench's per-variant guard) lets it through."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def guard_callbacks(recipe) -> list:
    """The callbacks every run gets (module docstring), in the order they must run."""
    return [SeededDataOrder(recipe.train.seed), NonFiniteGuard(recipe.train.learning_rate),
            SignalStop(), CheckpointExtras(get_strategy(recipe.strategy_name))]


# ---------------------------------------------------------------- data order

class SeededDataOrder(TrainerCallback):
    """transformers' LengthGroupedSampler draws each epoch's permutation from the global torch RNG,
    which dropout has advanced by then; a resumed process starts from a different RNG state and
    would see other batches. Seeding it from (data_seed, epoch) makes the order a function of the
    recipe. (The plain random sampler is already seeded this way by accelerate's
    SeedableRandomSampler.)"""

    def __init__(self, seed: int):
        self.seed = seed
        self.seeded = 0  # samplers seeded, for tests

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        import torch
        from transformers.trainer_pt_utils import LengthGroupedSampler

        epoch = math.floor((state.epoch or 0) + 1e-6)  # a resumed state.epoch is fractional
        seed = (args.data_seed if args.data_seed is not None else self.seed) + epoch
        for sampler in samplers_of(train_dataloader):
            if isinstance(sampler, LengthGroupedSampler):
                sampler.generator = torch.Generator().manual_seed(seed)
                self.seeded += 1


def samplers_of(loader) -> list:
    """The index samplers inside a (possibly accelerate-wrapped, batch-skipping) DataLoader."""
    found, stack, seen = [], [loader], set()
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if hasattr(obj, "__iter__") and hasattr(obj, "generator") and not hasattr(obj, "dataset"):
            found.append(obj)
        for attr in ("sampler", "batch_sampler", "base_dataloader"):
            stack.append(getattr(obj, attr, None))
    return found


# ---------------------------------------------------------------- divergence

class NonFiniteGuard(TrainerCallback):
    """Stop the run as soon as the loss or a trainable weight is NaN/inf, before a checkpoint is
    written: the last checkpoint on disk stays the last good one. Weights are scanned only at steps
    that log, evaluate, save or end training (NaN weights stay NaN, so nothing is missed)."""

    BAD_GRADIENT_LOGS = 3  # one overflowing batch can be noise; three logs in a row diverge

    def __init__(self, learning_rate: float):
        self.learning_rate = learning_rate
        self.bad_gradients = 0  # consecutive logs with a NaN/inf gradient norm

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            self.fail(args, state, f"the training loss is {loss}")
        # The norm before clipping. An infinite one is clipped to a zero update, so the weights
        # never go NaN and the run "trains" on (issue 17: alpha=1e30, grad_norm Infinity, exit 0)
        norm = (logs or {}).get("grad_norm")
        if isinstance(norm, float):
            self.bad_gradients = 0 if math.isfinite(norm) else self.bad_gradients + 1
        if self.bad_gradients >= self.BAD_GRADIENT_LOGS:
            self.fail(args, state, f"the gradient norm was {norm} at {self.bad_gradients} logged "
                                   "steps in a row (no update was applied)")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.check(args, state, control, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.check(args, state, control, model)

    def check(self, args, state, control, model) -> None:
        busy = (control.should_save or control.should_log or control.should_evaluate
                or control.should_training_stop)
        if model is not None and busy:
            bad = first_non_finite(model)
            if bad:
                self.fail(args, state, f"weight {bad} is NaN or infinite")

    def fail(self, args, state, what: str):
        from transformers.trainer_utils import get_last_checkpoint

        folder = args.output_dir
        last = get_last_checkpoint(folder) if os.path.isdir(folder) else None
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged at step {state.global_step}: {what}. The learning rate "
            f"({self.learning_rate:g}) is probably too high: lower train.learning_rate (e.g. 10x), "
            f"keep train.max_grad_norm > 0, or use train.precision: fp32. Nothing was written "
            f"after the problem; {kept}. Fix the recipe and rerun with --overwrite "
            f"(--resume would continue from that checkpoint).")


def first_non_finite(model) -> str | None:
    import torch

    for name, p in model.named_parameters():
        if p.requires_grad and not bool(torch.isfinite(p).all()):
            return name
    return None


# ---------------------------------------------------------------- checkpoints

class CheckpointExtras(TrainerCallback):
    """Checkpoint at epoch ends as well as every train.save_steps, and save the state that is part
    of the model's training but not of its weights. What that state is, the strategy says
    (Strategy.checkpoint_state: AdaLoRA's importance averages and rank pattern); so is what must
    be set aside while the Trainer writes a checkpoint (Strategy.set_aside_for_checkpoint)."""

    def __init__(self, strategy=None):
        self.strategy = strategy if strategy is not None else Strategy()
        self.last_saved = -1
        self.set_aside = None
        self.resume_from: str | None = None  # set by train.run_training (the Trainer doesn't say)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save:
            self.set_aside_once(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if args.save_strategy == "steps" and state.global_step != self.last_saved:
            control.should_save = True
        if control.should_save:
            self.set_aside_once(model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.set_aside is not None:
            self.strategy.put_back_after_checkpoint(model, self.set_aside)
            self.set_aside = None
        self.last_saved = state.global_step
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            save_extras(folder, self.strategy, model)
            seal_checkpoint(folder)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.last_saved = state.global_step
        if self.resume_from:
            load_extras(Path(self.resume_from), self.strategy, model)

    def set_aside_once(self, model) -> None:
        if self.set_aside is None:
            self.set_aside = self.strategy.set_aside_for_checkpoint(model)


def seal_checkpoint(folder: Path) -> None:
    """0644 weights and SHA256SUMS, written last: --resume trusts only a checkpoint whose every
    weight, optimizer and RNG file still matches it (peftkit.resume)."""
    from peftkit import rundir

    rundir.seal_weights(folder)


def save_extras(folder: Path, strategy, model) -> None:
    """peftkit_state.pt in every checkpoint: {strategy name: its state} (empty when it has none)."""
    import torch

    extras = {}
    state = strategy.checkpoint_state(model)
    if state is not None:
        extras[strategy.name] = state
    tmp = folder / (EXTRAS_FILE + ".tmp")
    torch.save(extras, tmp)
    os.replace(tmp, folder / EXTRAS_FILE)


def load_extras(folder: Path, strategy, model) -> None:
    import torch

    path = folder / EXTRAS_FILE
    if not path.is_file():
        strategy.restore_checkpoint_state(model, None, folder)
        return
    extras = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no pickle code
    if strategy.name in extras:
        strategy.restore_checkpoint_state(model, extras[strategy.name], folder)


# ---------------------------------------------------------------- signals

class SignalStop(TrainerCallback):
    """Ctrl-C or SIGTERM during training: finish the current step, write a checkpoint, stop, and
    raise RunInterrupted with the way to continue. A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None

    def handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a "
              "checkpoint (send it again to stop at once)", flush=True)

    @contextmanager
    def installed(self):
        """Own SIGINT/SIGTERM while the Trainer runs (main thread only); restore them after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.signum is not None:  # no epoch-end evaluation on the way out
            control.should_evaluate = False

    def on_train_end(self, args, state, control, **kwargs):
        # After the Trainer has written the checkpoint (and CheckpointExtras its extras).
        if self.signum is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            raise RunInterrupted(
                f"stopped by {signal.Signals(self.signum).name} at step {state.global_step} of "
                f"{state.max_steps}; checkpoint written to {folder}. Run the same command with "
                "--resume to continue.", self.signum)


# ---------------------------------------------------------------- books across interruptions

class RunTotals(TrainerCallback):
    """The run's totals (loss summed over every optimizer step, training seconds, real and padded
    tokens), carried through checkpoints so that a resumed run's result.json describes the whole
    run, not its last part (issue 17: after kill -9 train_loss covered only the resumed steps; after
    a kill during the final save it was 0.0). Each checkpoint gets `peftkit_totals-<rank>.json`.

    The loss is summed here, one float per training_step in step order, the same additions in an
    uninterrupted and a resumed run, so both end with the same number."""

    def __init__(self, counter, rank: int = 0):
        self.counter = counter  # peftkit.train.TokenCounter of this process
        self.file = f"peftkit_totals-{rank}.json"
        self.loss_sum = self.seconds_before = 0.0
        self.real_before = self.slots_before = 0
        self.started = None
        self.resume_from: str | None = None  # set by train.run_training

    def attach(self, trainer) -> "RunTotals":
        """Wrap trainer.training_step: the one place every step's loss passes through."""
        step = trainer.training_step

        def counted(*args, **kwargs):
            loss = step(*args, **kwargs)
            self.loss_sum += float(loss)
            return loss

        trainer.training_step = counted
        # first in line: its file is in the checkpoint before CheckpointExtras seals it
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        import time

        self.started = time.perf_counter()
        saved = Path(self.resume_from) / self.file if self.resume_from else None
        if saved is not None and saved.is_file():
            import json

            books = json.loads(saved.read_text(encoding="utf-8"))
            self.loss_sum, self.seconds_before = books["loss_sum"], books["seconds"]
            self.real_before, self.slots_before = books["real_tokens"], books["token_slots"]

    def on_save(self, args, state, control, **kwargs):
        import json

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        record = {"step": state.global_step, "loss_sum": self.loss_sum, "seconds": self.seconds(),
                  "real_tokens": self.real(), "token_slots": self.slots()}
        tmp = folder / (self.file + ".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, folder / self.file)

    def seconds(self) -> float:
        import time

        return self.seconds_before + (time.perf_counter() - self.started if self.started else 0.0)

    def real(self) -> int:
        return self.real_before + self.counter.real

    def slots(self) -> int:
        return self.slots_before + self.counter.slots
