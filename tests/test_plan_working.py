"""The plan's evaluation working memory (peftkit/plan/working.py): what an evaluation forward's
layers hold at once, from the allocator's own events, extrapolated from one and two rows to the
evaluation batch, without the output head's logits; and the memory arithmetic around it."""

from __future__ import annotations

import pytest
import torch

from peftkit.plan import memory
from peftkit.plan.working import allocations, peak, quantize_int8, working_bytes

MB = 2 ** 20


def test_peak_is_the_most_alive_at_once():
    assert peak([4, 4, -4, 8, -8, -4]) == 12
    assert peak([-8, 4]) == 0  # a free of an older tensor first: nothing new alive beyond the start
    assert peak([]) == 0


def tiny_bert():
    from transformers import BertConfig, BertForTokenClassification

    return BertForTokenClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, num_labels=5)).eval()


def rows_of(width: int):
    return lambda n: {"input_ids": torch.randint(1, 100, (n, width)),
                      "attention_mask": torch.ones(n, width, dtype=torch.long)}


def test_one_and_two_rows_extrapolate_to_the_measured_batch():
    """An encoder's allocations grow (almost: a few small masks do not) linearly with the rows:
    the extrapolated peak of 16 rows is the one measured on 16 rows, and it counts what a forward
    must hold at once by hand (each of the 4 heads' 24 x 24 fp32 attention scores, every row)."""
    model, batch_of = tiny_bert(), rows_of(24)
    predicted = working_bytes(model, batch_of, 16)
    assert predicted == pytest.approx(peak(allocations(model, batch_of(16))), rel=0.05)
    assert predicted >= 16 * 4 * 24 * 24 * 4


def test_a_causal_lms_logits_are_left_to_the_logits_term():
    """The head's output (rows x width x vocabulary) is what memory()'s logits term counts: the
    layers' working memory stops where the head starts, so a bigger vocabulary does not move it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama(vocab):
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            intermediate_size=64, use_cache=False)).eval()

    def batch_of(n):
        return {"input_ids": torch.randint(1, 64, (n, 16))}

    small, large = working_bytes(llama(64), batch_of, 8), working_bytes(llama(4096), batch_of, 8)
    assert small == large
    assert large < 8 * 16 * 4096 * 4  # the logits alone would be 2 MB


def test_eight_bit_layers_measure_bitsandbytes_own_copies():
    """quantize_int8 swaps the Linear layers `run` loads in 8-bit (not the task head) for
    bitsandbytes' Linear8bitLt. Its CPU matmul runs inside custom ops, where a dispatch mode sees
    nothing, and allocates its own copies (fp16 input, int8, an fp32 copy of the weight, int32
    result, de-quantized output): the allocator's events see them all."""
    bnb = pytest.importorskip("bitsandbytes")
    from peftkit.quantization import probe_cpu
    from peftkit.tasks import get_task

    if probe_cpu("8bit"):
        pytest.skip(f"no bitsandbytes 8-bit here: {probe_cpu('8bit')}")
    batch = rows_of(24)(8)
    fp32 = sum(size for size in allocations(tiny_bert(), batch) if size > 0)
    model = quantize_int8(tiny_bert(), get_task("token-classification"))
    assert isinstance(model.bert.encoder.layer[0].intermediate.dense, bnb.nn.Linear8bitLt)
    assert isinstance(model.classifier, torch.nn.Linear)
    assert not isinstance(model.classifier, bnb.nn.Linear8bitLt)
    weight_copies = sum(m.in_features * m.out_features * 4 for m in model.modules()
                        if isinstance(m, bnb.nn.Linear8bitLt))
    assert sum(size for size in allocations(model, batch) if size > 0) > fp32 + weight_copies


def test_evaluation_takes_the_larger_of_logits_and_the_layers_working_memory():
    """2M fp32 evaluation logits: 4 + 4 (log_softmax) bytes each = 16 MB. Working memory 30 MB
    outweighs them, 10 MB does not; what the model returns (a cache) comes on top of either."""
    def evaluation(working):
        return memory(baseline_mb=0, weight_bytes=0, trainable_bytes=0, activation_bytes=0,
                      logits_numel=0, eval_logits_numel=2 * MB, eval_logit_bytes=4, loading_bytes=0,
                      eval_other_bytes=3 * MB, eval_working_bytes=working).evaluation

    assert evaluation(30 * MB) == 30 + 3
    assert evaluation(10 * MB) == 16 + 3
