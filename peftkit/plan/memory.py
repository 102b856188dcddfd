"""`peftkit plan`: parameters, memory and time of a run before it starts, without its weights.

    recipe ─▶ pipeline.build          data, tokenizer, encoded lengths: what `run` trains on
           ─▶ meta model + strategy   parameter counts (exact), bytes of the weights as loaded
           ─▶ shapes.largest_*        the largest training batch (packed as `run` packs it) and
                                      evaluation batch, from the encoded lengths
           ─▶ probe.activations       saved tensors of one forward pass through a 1- and a
                                      2-layer copy (random weights) on that batch, scaled to N
           ─▶ probe.eval_row          one evaluation row: logits, key/value cache, x rows;
                                      the layers' working memory (working.py)
           ─▶ Memory.peak             baseline + weights + the largest of: loading, a training
                                      step, an evaluation step
           ─▶ seconds_per_epoch       FLOPs / a measured matmul rate (rough)

What is predicted is what result.json records as `peak_memory_mb`: the process's peak resident
memory on CPU (`ru_maxrss`), `max_memory_allocated` on CUDA. On CPU that includes the Python,
torch and transformers baseline, the data and the tokenizer: this process's own resident memory
once it has read and encoded the data, which is the same work `run` has done at that point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MB = 2 ** 20
ADAM_BYTES = 8           # AdamW: exp_avg + exp_avg_sq, fp32 per trainable parameter
LOGIT_GRAD_BUFFERS = 2   # backward through the loss: d(log_softmax) and d(logits), fp32 each
FP32 = 4                 # the loss upcasts logits to fp32 (a copy unless they are fp32 already)


@dataclass
class Memory:
    """Megabytes by source; each the largest it gets during the run."""

    baseline: float        # process before the model: libraries, data, tokenizer
    weights: float         # the model as loaded (8-bit Linear weights: 1 byte), adapters included
    gradients: float       # one per trainable parameter, in its dtype
    optimizer: float       # AdamW's two states per trainable parameter
    activations: float     # saved for backward at the largest training batch
    logits_backward: float  # gradient buffers of the output logits (vocabulary-sized for an LM)
    evaluation: float      # the largest evaluation batch: logits and the loss's fp32 copies, or
                           # what its layers hold at once (the larger), + what the model returns
    loading: float         # while loading: what is read beside the built model

    @property
    def training_step(self) -> float:
        return self.optimizer + self.gradients + self.activations + self.logits_backward

    @property
    def peak(self) -> float:
        """Gradients are freed after each optimizer step (zero_grad(set_to_none)); AdamW's
        states stay for the run, so evaluation sits on top of them; loading comes first."""
        return self.baseline + self.weights + max(self.loading, self.training_step,
                                                  self.optimizer + self.evaluation)

    def phase(self) -> str:
        """Which part of the run reaches the peak."""
        parts = {"loading": self.loading, "training": self.training_step,
                 "evaluation": self.optimizer + self.evaluation}
        return max(parts, key=parts.get)


def memory(*, baseline_mb: float, weight_bytes: int, trainable_bytes: int, activation_bytes: int,
           logits_numel: int, eval_logits_numel: int, eval_logit_bytes: int,
           loading_bytes: int, eval_other_bytes: int = 0, eval_working_bytes: int = 0) -> Memory:
    """The arithmetic, from counts: trainable_bytes is the trainable parameters' own bytes
    (fp32: 4 per parameter), logits_numel the training batch's output logits, eval_logits_numel
    and eval_logit_bytes (per element) the largest evaluation batch's, eval_other_bytes what else
    its forward returns (a decoder's key/value cache), eval_working_bytes what its layers hold
    while they run. The layers' memory is free again before the logits exist, so an evaluation
    takes the larger of the two."""
    trainable = trainable_bytes // 4 if trainable_bytes else 0  # parameters (trained in fp32)
    return Memory(
        baseline=baseline_mb,
        weights=weight_bytes / MB,
        gradients=trainable_bytes / MB,
        optimizer=trainable * ADAM_BYTES / MB,
        activations=activation_bytes / MB,
        logits_backward=logits_numel * 4 * LOGIT_GRAD_BUFFERS / MB,
        evaluation=max(eval_logits_numel * (eval_logit_bytes + (FP32 if eval_logit_bytes != FP32 else 0)
                                            + FP32),  # logits, fp32 copy, log_softmax
                       eval_working_bytes) / MB + eval_other_bytes / MB,
        loading=loading_bytes / MB,
    )


@dataclass
class Plan:
    """What `peftkit plan` prints and result.json keeps under `plan`."""

    total_params: int
    trainable_params: int
    memory: Memory
    train_batch: dict          # rows x width of the largest training batch, examples per batch
    eval_batch: dict
    seconds_per_epoch: float
    steps_per_epoch: int
    flops_per_token: float
    matmul_gflops: float
    precision: str
    available_mb: float
    advice: list[str]

    @property
    def peak_memory_mb(self) -> float:
        return self.memory.peak

    @property
    def fits(self) -> bool:
        return self.peak_memory_mb <= self.available_mb

    def record(self) -> dict:
        return {"peak_memory_mb": round(self.peak_memory_mb, 1),
                "seconds_per_epoch": round(self.seconds_per_epoch, 3),
                "peak_phase": self.memory.phase(),
                "memory_mb": {k: round(v, 1) for k, v in asdict(self.memory).items()},
                "total_params": self.total_params, "trainable_params": self.trainable_params,
                "train_batch": self.train_batch, "eval_batch": self.eval_batch,
                "steps_per_epoch": self.steps_per_epoch,
                "flops_per_token": self.flops_per_token, "matmul_gflops": round(self.matmul_gflops, 1),
                "precision": self.precision, "available_mb": round(self.available_mb),
                "fits": self.fits, "advice": self.advice}
