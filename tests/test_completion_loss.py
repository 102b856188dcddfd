"""Causal-LM training loss on completion positions only, in chunks (peftkit/tasks/completion_loss.py):
the same loss and gradients as the model's own full-logits loss, under peft and in the Trainer."""

from __future__ import annotations

import pytest
import torch

from peftkit.packing import PackingCollator
from peftkit.tasks.base import IGNORE
from peftkit.tasks.completion_loss import CompletionLoss, completion_nll

VOCAB = 50


def tiny_llama(seed: int = 0, tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied, pad_token_id=1, attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def examples(n: int = 6, seed: int = 1) -> list[dict]:
    """Prompt (label -100) then completion, lengths that differ (so padding and packing matter)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        p, c = int(torch.randint(3, 9, (1,), generator=g)), int(torch.randint(2, 7, (1,), generator=g))
        ids = torch.randint(2, VOCAB, (p + c,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * p + ids[p:]})
    return rows


def padded(rows: list[dict]) -> dict:
    from peftkit.tasks.causal_lm import CompletionCollator

    return CompletionCollator(pad_id=1)(rows)


def loss_and_grads(model, fn) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = fn()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def model_loss(model, batch, count=None):
    extra = {} if count is None else {"num_items_in_batch": count}
    return lambda: model(**batch, **extra).loss


def task_loss(model, batch, count=None, chunk_logits=None):
    loss = CompletionLoss(chunk_logits) if chunk_logits else CompletionLoss()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return lambda: loss(model, model, inputs, batch["labels"], count)


def assert_same(a, b, tol=1e-5):
    assert a[0] == pytest.approx(b[0], rel=tol)
    assert len(a[1]) == len(b[1]) > 0
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("counted", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_completion_only_logits_give_the_full_logits_loss_and_gradients(counted, packed):
    model = tiny_llama().train()
    rows = examples()
    batch = PackingCollator(pad_id=1, causal=True)(rows) if packed else padded(rows)
    count = int((batch["labels"][:, 1:] != IGNORE).sum()) if counted else None
    assert_same(loss_and_grads(model, task_loss(model, batch, count)),
                loss_and_grads(model, model_loss(model, batch, count)))


def test_chunked_loss_equals_unchunked():
    model = tiny_llama(tied=False).train()
    batch = padded(examples())
    one = loss_and_grads(model, task_loss(model, batch))
    chunks = loss_and_grads(model, task_loss(model, batch, chunk_logits=3 * VOCAB))  # 3 positions each
    assert_same(chunks, one, tol=1e-6)


def test_only_labelled_positions_reach_the_output_layer():
    model = tiny_llama()
    batch = padded(examples())
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    total, count = completion_nll(model.lm_head, torch.randn(*batch["input_ids"].shape, 32), batch["labels"],
                                  chunk_logits=4 * VOCAB)
    assert count == int((batch["labels"][:, 1:] != IGNORE).sum()) == sum(seen)
    assert max(seen) <= 4 and total.dim() == 0


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny_llama().train()
    batch = padded(examples())
    plain = loss_and_grads(model, task_loss(model, batch))
    model.activation_checkpointing_enable()
    assert_same(loss_and_grads(model, task_loss(model, batch)), plain)


@pytest.mark.parametrize("method", ["lora", "prompt", "ia3"])
def test_under_peft_the_loss_is_the_models(method):
    """LoRA and IA3 change modules; prompt tuning prepends virtual positions to the hidden states."""
    import peft

    configs = {"lora": peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_dropout=0.0),
               "prompt": peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
               "ia3": peft.IA3Config(task_type="CAUSAL_LM")}
    model = peft.get_peft_model(tiny_llama(), configs[method]).train()
    if method == "lora":  # B starts at zero: give the adapter an effect to compare
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    batch = padded(examples())
    count = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert_same(loss_and_grads(model, task_loss(model, batch, count)),
                loss_and_grads(model, model_loss(model, batch, count)))


class ScaledLlama:
    """A model whose logits are not its output layer's (as Gemma 2 soft-caps and Granite scales)."""

    @staticmethod
    def build():
        model = tiny_llama()
        forward = model.forward

        def scaled(*args, **kwargs):
            out = forward(*args, **kwargs)
            out.logits = 3.0 * torch.tanh(out.logits / 3.0)  # Gemma 2's soft cap
            return out

        model.forward = scaled
        return model


def test_models_whose_logits_are_not_the_output_layer_keep_their_loss():
    model = ScaledLlama.build().train()
    batch = padded(examples())
    loss = CompletionLoss()
    assert loss(model, model, {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]) is None
    assert loss.plain is False


@pytest.mark.parametrize("accumulate", [1, 2])
def test_trainer_training_and_evaluation_losses_are_unchanged(tmp_path, accumulate):
    """Through the Trainer's compute_loss (num_items_in_batch, accumulation scaling): the training
    loss equals the plain Trainer's; evaluation (full logits, outputs returned) is the plain path."""
    from transformers import Trainer, TrainingArguments

    from peftkit.train import with_task_loss

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                             gradient_accumulation_steps=accumulate)
    model = tiny_llama().train()
    batch = padded(examples())
    count = torch.tensor(int((batch["labels"][:, 1:] != IGNORE).sum()))
    task_loss = CompletionLoss()
    plain, ours = Trainer(model=model, args=args), with_task_loss(Trainer, task_loss)(model=model, args=args)
    head_rows = []
    model.lm_head.register_forward_hook(lambda m, a, out: head_rows.append(tuple(a[0].shape)))
    assert_same(loss_and_grads(model, lambda: ours.compute_loss(model, dict(batch), num_items_in_batch=count)),
                loss_and_grads(model, lambda: plain.compute_loss(model, dict(batch), num_items_in_batch=count)))
    assert task_loss.plain and (int(count), 32) in head_rows  # the output layer saw the completions only
    model.eval()
    with torch.no_grad():
        loss, outputs = ours.compute_loss(model, dict(batch), return_outputs=True)
        expected = plain.compute_loss(model, dict(batch))
    assert outputs.logits.shape[-1] == VOCAB and loss.item() == pytest.approx(expected.item(), rel=1e-6)
