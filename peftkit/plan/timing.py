"""Training time per epoch: FLOPs over a matmul rate measured here. A rough estimate: real steps
also spend time outside matmuls (data, optimizer, small kernels) and other jobs share the cores.

FLOPs per token (Kaplan et al. 2020, "Scaling Laws", section 2.1): 2 per matmul weight forward;
backward 2 more for the input gradient (every layer, frozen or not, passes it down) and 2 for the
weight gradient of trained weights only: 4N frozen + 2 x trained, 6N when everything trains.
Attention adds 2 x 2 x width x hidden per layer and token forward (scores and weighted sum), x3
with backward.
"""

from __future__ import annotations

import functools
import time

MATMUL_SIZE = 1024


@functools.cache
def matmul_gflops(precision: str) -> float:
    """GFLOP/s of a square matmul in the run's precision, on this process's threads (once)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype)
    a @ b  # warm-up: kernels, thread pool
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < 0.2:
        a @ b
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * MATMUL_SIZE ** 3 * runs / (time.perf_counter() - start) / 1e9


def flops_per_token(matmul_weights: int, trained_weights: int, layers: int, hidden: int,
                    width: int) -> float:
    """Training FLOPs per token slot: matmul weights used per token (a tied LM head counted at
    its use), those of them trained, and the attention over `width` positions."""
    attention = 3 * 2 * 2 * width * hidden * layers
    return 4 * matmul_weights + 2 * trained_weights + attention


def linear_weights(model) -> tuple[int, int]:
    """(weights of every Linear as used in a forward pass, the trained ones among them)."""
    import torch

    used = trained = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            used += module.weight.numel()
            trained += module.weight.numel() if module.weight.requires_grad else 0
    return used, trained
