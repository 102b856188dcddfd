"""Bottleneck adapters on tiny BERT and Llama models built from configs."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import (
    AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig,
    LlamaConfig,
)

from peftkit.errors import PeftkitError
from peftkit.strategies import get_strategy
from peftkit.strategies.adapter import AdaptedLinear, Bottleneck
from peftkit.strategies.base import ApplyContext
from peftkit.strategies.configs import AdapterConfig

STRATEGY = get_strategy("adapter")
BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100)
LLAMA = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=37, vocab_size=100)


def ctx(task="token-classification"):
    return ApplyContext(task=types.SimpleNamespace(name=task), head_names=["classifier", "score"])


def bert_tokens(seed=0):
    torch.manual_seed(seed)
    return AutoModelForTokenClassification.from_config(BertConfig(**BERT, num_labels=3)).eval()


def llama_lm(seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA)).eval()


def batch(seed=1, shape=(2, 9)):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 100, shape, generator=g),
            "attention_mask": torch.ones(shape, dtype=torch.long)}


def n_adapters(model):
    return sum(isinstance(m, AdaptedLinear) for m in model.modules())


def test_step0_reproduces_base_exactly():
    base = bert_tokens()
    inputs = batch()
    with torch.no_grad():
        expected = base(**inputs).logits
        model = STRATEGY.apply(bert_tokens(), AdapterConfig(), ctx())
        assert torch.equal(model(**inputs).logits, expected)


@pytest.mark.parametrize("placement,per_layer", [("houlsby", 2), ("pfeiffer", 1)])
def test_placement_counts(placement, per_layer):
    model = STRATEGY.apply(bert_tokens(), AdapterConfig(placement=placement), ctx())
    assert n_adapters(model) == per_layer * BERT["num_hidden_layers"]
    layer = model.bert.encoder.layer[0]
    assert isinstance(layer.output.dense, AdaptedLinear)
    assert isinstance(layer.attention.output.dense, AdaptedLinear) == (placement == "houlsby")


def test_leave_out_and_bottleneck_size():
    model = STRATEGY.apply(bert_tokens(), AdapterConfig(leave_out=[0], bottleneck_size=5), ctx())
    layers = model.bert.encoder.layer
    assert not any(isinstance(m, AdaptedLinear) for m in layers[0].modules())
    assert n_adapters(layers[1]) == 2
    assert layers[1].output.dense.adapter.down.out_features == 5
    reduced = STRATEGY.apply(bert_tokens(), AdapterConfig(reduction_factor=8.0), ctx())
    assert reduced.bert.encoder.layer[0].output.dense.adapter.down.out_features == 4   # 32 / 8


def test_leave_out_out_of_range_is_a_clear_error():
    with pytest.raises(PeftkitError, match="leave_out"):
        STRATEGY.apply(bert_tokens(), AdapterConfig(leave_out=[7]), ctx())


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_only_adapters_and_head_train():
    names = trainable(STRATEGY.apply(bert_tokens(), AdapterConfig(), ctx()))
    assert names and all(".adapter." in n or n.startswith("classifier.") for n in names)
    assert {"classifier.weight", "classifier.bias"} <= names


def test_train_layer_norms():
    names = trainable(STRATEGY.apply(bert_tokens(), AdapterConfig(train_layer_norms=True), ctx()))
    norms = {n for n in names if "LayerNorm" in n}
    assert "bert.encoder.layer.0.output.LayerNorm.weight" in norms
    assert "bert.embeddings.LayerNorm.weight" not in names   # only norms of adapted layers
    assert names - norms and all(".adapter." in n or n.startswith("classifier.") for n in names - norms)


def test_training_moves_adapters_and_keeps_base_bit_identical():
    model = STRATEGY.apply(bert_tokens(), AdapterConfig(bottleneck_size=8, init_scale=0.1), ctx())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if ".adapter." in n}
    inputs, labels = batch(), torch.randint(0, 3, (2, 9), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(**inputs, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, adapters[n]) for n, p in model.named_parameters() if n in adapters)


def perturb(model):
    """Non-zero up-projections, so a round trip is tested on something the base would not compute."""
    torch.manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.up.weight.normal_(std=0.5)
                m.down.weight.normal_(std=0.5)


def test_save_load_round_trip(tmp_path):
    cfg = AdapterConfig(placement="pfeiffer", train_layer_norms=True)
    model = STRATEGY.apply(bert_tokens(), cfg, ctx())
    perturb(model)
    with torch.no_grad():
        model.bert.encoder.layer[1].output.LayerNorm.weight.mul_(1.5)
        model.classifier.weight.add_(0.3)
    inputs = batch()
    expected = model(**inputs).logits.detach()
    STRATEGY.save(model, tmp_path)
    assert (tmp_path / "peftkit_adapter.json").read_text().count('"pfeiffer"') == 1
    loaded = STRATEGY.load(lambda: bert_tokens(), tmp_path, cfg, ctx())
    assert torch.allclose(loaded(**inputs).logits, expected, atol=1e-6)
    assert not torch.allclose(bert_tokens()(**inputs).logits, expected, atol=1e-3)


def test_sequence_classification():
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(BertConfig(**BERT, num_labels=2)).eval()
    inputs = batch()
    expected = base(**inputs).logits.detach()
    model = STRATEGY.apply(base, AdapterConfig(), ctx("sequence-classification"))
    assert torch.equal(model(**inputs).logits, expected)


def test_llama(tmp_path):
    inputs = batch()
    expected = llama_lm()(**inputs).logits.detach()
    cfg = AdapterConfig()
    model = STRATEGY.apply(llama_lm(), cfg, ctx("causal-lm"))
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.o_proj, AdaptedLinear)
    assert isinstance(layer.mlp.down_proj, AdaptedLinear)
    assert torch.equal(model(**inputs).logits, expected)
    assert all(".adapter." in n for n in trainable(model))
    perturb(model)
    changed = model(**inputs).logits.detach()
    assert not torch.allclose(changed, expected, atol=1e-4)
    STRATEGY.save(model, tmp_path)
    loaded = STRATEGY.load(llama_lm, tmp_path, cfg, ctx("causal-lm"))
    assert torch.allclose(loaded(**inputs).logits, changed, atol=1e-6)
    assert loaded.generate(inputs["input_ids"][:1], max_new_tokens=3, do_sample=False).shape == (1, 12)


def test_unsupported_architecture_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(PeftkitError, match="cannot find"):
        STRATEGY.apply(model, AdapterConfig(), ctx())


def test_merge_refuses_and_names_export():
    model = STRATEGY.apply(bert_tokens(), AdapterConfig(), ctx())
    assert not STRATEGY.can_merge and not STRATEGY.peft_format
    assert STRATEGY.callbacks(model, AdapterConfig(), ctx()) == []
    with pytest.raises(PeftkitError, match="peftkit export"):
        STRATEGY.merge(model)
