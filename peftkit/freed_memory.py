"""Giving freed memory back to the system at a run's phase changes (CPU processes, glibc).

glibc keeps freed chunks below its mmap threshold (at most 32 MB) inside the process. A training
step frees thousands of them (activations, gradients); an evaluation then maps its large tensors
(a causal LM's logits: 648 MB for 32 x 108 positions of a 49,152-word vocabulary) on top of them,
so the evaluation's resident peak was the training's high-water mark plus the evaluation's own
(SmolLM2 LoRA, benchmarks/RESULTS.md#plan). malloc_trim(0) returns the free heap pages first.
No well-kept library does this for the Trainer. It costs a few hundred milliseconds on a large
heap (0.4 s after freeing 2 GB of 1 MB tensors, gc included), once before training, once before
each evaluation during training and once after training.
"""

from __future__ import annotations

import gc

from transformers import TrainerCallback


def release_freed_memory() -> None:
    """Collect cycles, then ask glibc to give free heap pages back; elsewhere (musl, macOS,
    Windows) nothing happens."""
    import ctypes
    import ctypes.util

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ReleaseFreedMemory(TrainerCallback):
    """Before training (what loading freed), before each evaluation during training and at the
    end of training (what the training steps freed)."""

    def on_train_begin(self, args, state, control, **kwargs):
        release_freed_memory()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate:  # set by the flow callback, which runs first
            release_freed_memory()

    def on_train_end(self, args, state, control, **kwargs):
        release_freed_memory()
