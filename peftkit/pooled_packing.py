"""Packed training batches for sequence classification: examples share rows, one label each.

    packed rows ──encoder (block-diagonal mask)──▶ hidden (rows, width, d)
        └ forward hook: hidden[row, first slot] per example ─▶ (examples, 1, d)
    ──▶ the model's own pooler / head / loss, as for a batch of one-token rows: logits (examples, C)

Short texts (reviews, tweets, SST-2's phrases: 13 tokens on average) padded to the longest of a
random batch of 16 fill about 2.7 slots per real token; packed, about 1.1. Encoders that classify
from the first token (BERT's pooler, RoBERTa's and ELECTRA's heads read position 0) then see
exactly what the padded batch gives them. Which models those are is not guessed: before training,
the first training examples go through both ways (eval mode, no gradients); where the logits differ
(a head that pools the last token or the mean, no `encoder` to hook, another output layout), the
run trains on padded batches and says so. No library offers this: transformers' packing
(DataCollatorWithFlattening) is for token-level losses.
"""

from __future__ import annotations

from contextlib import contextmanager

import click

from peftkit import env

STARTS = "example_starts"  # batch key: (row, slot) of each example's first token, in batch order
CHECK_EXAMPLES = 8
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}  # float error of attention over a wider row


def encoder_of(model):
    """The module whose output is the last hidden state the head pools: the backbone's encoder
    (BERT-style models), under peft's wrapper where there is one; None where there is none."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoder = getattr(getattr(inner, "base_model", None), "encoder", None)
    return encoder if isinstance(encoder, torch.nn.Module) else None


@contextmanager
def first_tokens(model, starts):
    """Inside: the encoder's last hidden state is (examples, 1, d), each example's first token."""
    def gather(module, args, output):
        hidden = output[0]
        picked = hidden[starts[:, 0].to(hidden.device), starts[:, 1].to(hidden.device)][:, None]
        if isinstance(output, tuple):
            return (picked, *output[1:])
        output["last_hidden_state"] = picked  # a ModelOutput: the key and the attribute
        return output

    handle = encoder_of(model).register_forward_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def forward_packed(model, batch: dict):
    """model(**batch) for a pooled packed batch (its STARTS taken out)."""
    batch = dict(batch)
    starts = batch.pop(STARTS)
    with first_tokens(model, starts):
        return model(**batch)


def mismatch(model, features: list[dict], packing, padding) -> str | None:
    """Why packing cannot stand in for padding on this model (None: the logits agree)."""
    import torch

    if encoder_of(model) is None:
        return "the model has no encoder module to gather from"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = forward_packed(model, to(packing(features), device))
            padded = model(**to(padding(features), device))
        torch.testing.assert_close(packed["logits"], padded["logits"], **TOLERANCE)
    except Exception as exc:  # noqa: BLE001 - any difference, shape or error: train padded
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        model.train(was_training)
    return None


def to(batch: dict, device) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def check_features(dataset) -> list[dict]:
    """The first training examples, as the collators receive them."""
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels")
            if k in dataset.column_names]
    rows = dataset.select(range(min(CHECK_EXAMPLES, len(dataset))))
    return [{k: row[k] for k in keys} for row in rows]


def pooled_trainer(packed_trainer, packing):
    """packing.PackedTrainer's subclass: packed batches once the check passes, their rows gathered."""

    class PooledPackedTrainer(packed_trainer):
        def packs(self) -> bool:
            why = mismatch(self.model, check_features(self.train_dataset), packing, self.data_collator)
            if why and env.is_main():
                click.secho(f"note: training batches padded, not packed: packed rows do not give "
                            f"this model's padded logits ({why})", fg="yellow")
            return not why

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            starts = inputs.pop(STARTS, None)
            if starts is None:  # evaluation and padded batches
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with first_tokens(model, starts):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return PooledPackedTrainer
