"""Causal-LM training loss over the completion positions only, in chunks.

    model forward, output layer bypassed ──▶ hidden states (rows, width, d)
      shift: hidden[:, :-1] predicts labels[:, 1:]; keep the positions whose label is not -100
      kept hidden (n, d) ──chunks of CHUNK_LOGITS / vocab rows──▶ head ──▶ fp32 cross-entropy (sum)
    loss = sum / num_items_in_batch (the Trainer's count) or / n: what the model's loss returns

The model's own loss computes the 49,152-word output layer of SmolLM2 at every position, prompt and
padding included, and upcasts all those logits to fp32 before the cross-entropy. Here the layer runs
only where a label is, and the fp32 logits of one chunk exist at a time (more than one chunk: each
is recomputed in backward, torch.utils.checkpoint, rather than kept): the idea of fused linear +
cross-entropy kernels, which on CPU chunking gives. Evaluation and generation keep the model's
forward (full logits: token accuracy reads them).

Whether the model's logits are exactly its output layer applied to the hidden states (Gemma 2
soft-caps them, Granite scales them) is checked once, on the first training batch: where they
differ, the model's own loss is used for the whole run.
"""

from __future__ import annotations

from contextlib import contextmanager

from peftkit.tasks.base import IGNORE

CHUNK_LOGITS = 1 << 25   # fp32 logits per chunk: 128 MB (2,730 positions of a 49,152-word vocabulary)


def completion_nll(head, hidden, labels, chunk_logits: int = CHUNK_LOGITS):
    """(sum of the fp32 cross-entropy over the labelled positions, their count).
    `hidden`: the positions' last hidden states; prompt tuning's virtual positions come first
    and carry no label, so the last labels.shape[1] positions are the labelled ones."""
    from torch.utils.checkpoint import checkpoint

    hidden = hidden[:, -labels.shape[1]:]
    gold = labels[:, 1:].to(hidden.device)
    keep = gold != IGNORE
    rows, targets = hidden[:, :-1][keep], gold[keep]
    step = max(1, chunk_logits // vocab_size(head))
    total = None
    for start in range(0, max(len(rows), 1), step):  # one (maybe empty) chunk: the loss keeps a graph
        args = (head, rows[start:start + step], targets[start:start + step])
        part = chunk_nll(*args) if len(rows) <= step else checkpoint(chunk_nll, *args, use_reentrant=False)
        total = part if total is None else total + part
    return total, len(rows)


def chunk_nll(head, rows, targets):
    import torch.nn.functional as F

    return F.cross_entropy(head(rows).float(), targets, reduction="sum")


def output_head(model):
    """The model's vocabulary projection (a causal LM's lm_head), or None (classifiers)."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if get else None


def vocab_size(head) -> int:
    weight = getattr(head, "weight", None)
    return getattr(head, "out_features", None) or (weight.shape[0] if weight is not None else 1)


@contextmanager
def head_bypassed(head):
    """The output layer returns its input during the block: the model's forward yields hidden states
    as `logits`. Set on the instance (state_dict keys, peft's wrappers and hooks stay as they are)."""
    saved = head.__dict__.get("forward")
    head.forward = _identity
    try:
        yield
    finally:
        if saved is None:
            del head.forward
        else:
            head.forward = saved


def _identity(x, *args, **kwargs):
    return x


class CompletionLoss:
    """The Trainer's training loss for causal LMs (train.with_task_loss). Call it with the model the
    Trainer runs (maybe DDP-wrapped), the unwrapped one, the batch and labels; it returns the loss
    or None where the model's own loss must be used (no output layer found, or logits that are not
    the plain output layer: checked once)."""

    def __init__(self, chunk_logits: int = CHUNK_LOGITS):
        self.chunk_logits = chunk_logits
        self.plain: bool | None = None   # the first batch's check

    def __call__(self, model, unwrapped, inputs: dict, labels, num_items_in_batch=None):
        head = output_head(unwrapped)
        if head is None:
            return None
        if self.plain is None:
            self.plain = logits_are_plain(unwrapped, head, inputs)
        if not self.plain:
            return None
        with head_bypassed(head):
            outputs = model(**inputs)
        hidden = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        total, count = completion_nll(head, hidden, labels, self.chunk_logits)
        import torch

        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        return total / torch.as_tensor(denominator, device=total.device)


def first_row(inputs: dict) -> dict:
    """The batch's first row (tensors sliced, other values as they are)."""
    import torch

    return {k: v[:1] if torch.is_tensor(v) and v.dim() > 0 else v for k, v in inputs.items()}


def logits_are_plain(model, head, inputs: dict) -> bool:
    """True when the model's logits equal head(hidden states) on the batch's first row (eval mode:
    dropout would make the two forwards differ; no gradients)."""
    import torch

    row = first_row(inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(**row)["logits"]
            with head_bypassed(head):
                hidden = model(**row)["logits"]
            mine = head(hidden)
    finally:
        model.train(was_training)
    if mine.shape != logits.shape:
        return False
    scale = logits.float().abs().max().clamp(min=1.0)
    return bool(((mine.float() - logits.float()).abs().max() / scale) < 1e-2)
