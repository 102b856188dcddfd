"""What an evaluation forward holds at once: the allocator's live bytes, measured.

An evaluation runs without gradients, so nothing is saved and each layer's temporaries die before
the next layer runs; its memory is the most the layers hold at one moment (attention scores, the
feed-forward's intermediate, a LoRA branch's output beside the base's, ...), not what they
allocate in total. A dispatch mode cannot see inside custom ops (bitsandbytes' int8 matmul casts,
quantizes and de-quantizes there), so the count comes from the profiler's allocator events
(`profile_memory`: every allocation and free, with its size, in order).

The output head is left out: a causal LM's logits (and the loss's fp32 copies) are counted by the
plan's logits term (memory.py), and on CPU they are large enough to live outside the heap.
"""

from __future__ import annotations

import contextlib
import os
import sys

HEAD_MARK = "peftkit.plan.head"


def working_bytes(model, batch_of, rows: int) -> int:
    """Peak bytes an evaluation forward of `rows` rows holds beyond what existed before it, up to
    the output head; `batch_of(n)` collates n rows. Measured at one row and at two, each
    allocation and free extrapolated to `rows` (where the peak falls can move with the rows); if
    the two forwards allocate differently, their peaks are extrapolated instead."""
    one, two = allocations(model, batch_of(1)), allocations(model, batch_of(2))
    if len(one) != len(two):
        return max(0, peak(one) + (rows - 1) * (peak(two) - peak(one)))
    return peak([a + (rows - 1) * (b - a) for a, b in zip(one, two)])


def peak(sizes: list[int]) -> int:
    live = top = 0
    for size in sizes:
        live += size
        top = max(top, live)
    return top


def allocations(model, batch: dict) -> list[int]:
    """Signed sizes of the allocations (+) and frees (-) of `model(**batch)`, in order, up to
    its output head."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    prof, mark = profile(activities=[ProfilerActivity.CPU], profile_memory=True), HeadMark(model)
    try:
        with quiet_stderr():
            prof.__enter__()
        with torch.no_grad():
            model(**batch)
    finally:
        with quiet_stderr():
            prof.__exit__(None, None, None)
        mark.remove()
    return before_head(prof.profiler.kineto_results.experimental_event_tree())


@contextlib.contextmanager
def quiet_stderr():
    """kineto writes a line to the process's stderr at each profiler start and stop on CPU (its
    KINETO_LOG_LEVEL is read once, when torch loads it): not for `run`'s output."""
    sys.stderr.flush()
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no stderr to quiet
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def before_head(roots) -> list[int]:
    from torch._C._profiler import _EventType

    found, head_start = [], None
    stack = list(roots)
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            found.append((event.start_time_ns, event.extra_fields.alloc_size))
        elif event.name == HEAD_MARK and (head_start is None or event.start_time_ns < head_start):
            head_start = event.start_time_ns
        stack.extend(event.children)
    return [size for t, size in sorted(found) if head_start is None or t < head_start]


class HeadMark:
    """A profiler range around the output head's forward (a causal LM's vocabulary projection),
    so that its allocations can be told from the layers'."""

    def __init__(self, model):
        from torch.autograd.profiler import record_function

        from peftkit.tasks.completion_loss import output_head

        head = output_head(model)
        self.ranges, self.handles = [], []
        if head is not None:
            def enter(module, args):
                self.ranges.append(record_function(HEAD_MARK))
                self.ranges[-1].__enter__()

            def leave(module, args, output):
                self.ranges.pop().__exit__(None, None, None)

            self.handles = [head.register_forward_pre_hook(enter), head.register_forward_hook(leave)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def quantize_int8(model, task):
    """The Linear layers `run` loads in 8-bit (models.load_model with quantization.bnb_config),
    swapped for bitsandbytes' Linear8bitLt with the same weights, so that an evaluation forward
    runs bitsandbytes' own matmul; None if bitsandbytes cannot be used here."""
    from peftkit.quantization import int8_layer, int8_linears, probe_cpu

    if probe_cpu("8bit"):  # no usable bitsandbytes here: the run itself says why
        return None
    for parent, name, linear in int8_linears(model, task):
        layer = int8_layer(linear.in_features, linear.out_features, linear.bias is not None)
        layer.load_state_dict(linear.state_dict())
        setattr(parent, name, layer.to("cpu"))  # .to() quantizes the weight
    return model
