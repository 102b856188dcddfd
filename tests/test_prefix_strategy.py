"""Prefix tuning through the attention registry on tiny BERT and Llama models built from configs."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from transformers import (
    AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig,
    LlamaConfig,
)

from peftkit.errors import PeftkitError
from peftkit.strategies import get_strategy
from peftkit.strategies.base import ApplyContext
from peftkit.strategies.configs import PrefixConfig
from peftkit.strategies.prefix import ATTN_NAME, ENCODER_ATTR, attention_modules, extend_mask, fold_prefixes

STRATEGY = get_strategy("prefix")
BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100)
LLAMA = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=37, vocab_size=100)
PLAIN = PrefixConfig(num_virtual_tokens=4, reparameterize=False)
REPARAM = PrefixConfig(num_virtual_tokens=4, reparameterize=True, hidden_size=16)


def ctx(task="token-classification"):
    return ApplyContext(task=types.SimpleNamespace(name=task), head_names=["classifier", "score"])


def bert_tokens(seed=0):
    torch.manual_seed(seed)
    return AutoModelForTokenClassification.from_config(BertConfig(**BERT, num_labels=3)).eval()


def bert_sequence(seed=0):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(BertConfig(**BERT, num_labels=2)).eval()


def llama_lm(seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA)).eval()


def ids(shape=(2, 7), seed=1):
    return torch.randint(5, 100, shape, generator=torch.Generator().manual_seed(seed))


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("cfg", [PLAIN, REPARAM], ids=["plain", "reparam"])
def test_custom_attention_is_used_and_only_prefix_and_head_train(cfg):
    x = ids()
    base = bert_tokens()(input_ids=x).logits.detach()
    model = STRATEGY.apply(bert_tokens(), cfg, ctx())
    assert model.config._attn_implementation == ATTN_NAME
    out = model(input_ids=x).logits
    assert not torch.allclose(out, base, atol=1e-4)   # the prefixes change the attention
    names = trainable(model)
    assert {"classifier.weight", "classifier.bias"} <= names
    assert all(n.startswith(("classifier.", ENCODER_ATTR)) or n.endswith(("prefix_key", "prefix_value"))
               for n in names)
    out.sum().backward()
    prefix_grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n}
    assert prefix_grads and all(g is not None for g in prefix_grads.values())
    # the MLP's zero-initialised output layer passes no gradient below it at step 0 (as LoRA's B)
    moving = [g for n, g in prefix_grads.items() if not n.startswith(ENCODER_ATTR) or ".mlp.2." in n]
    assert moving and all(g.abs().sum() > 0 for g in moving)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_extend_mask_handles_bool_float_and_skipped_causal_masks():
    module, q, k = types.SimpleNamespace(is_causal=True), torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 5, 8)
    boolean = torch.tensor([[[[True, False, True, True, True]] * 3]])
    row = extend_mask(boolean, module, q, k, 2, {})[0, 0, 0]
    assert row.tolist() == [True, True, True, False, True, True, True]   # 2 prefix columns, then the mask
    additive = torch.zeros(1, 1, 3, 5).masked_fill(~boolean, float("-inf"))
    assert extend_mask(additive, module, q, k, 2, {})[0, 0, 0, :3].tolist() == [0.0, 0.0, 0.0]
    causal = extend_mask(None, module, q, k, 2, {})   # queries are the last 3 of 5 keys
    assert causal[0, 0].int().tolist() == [[1, 1, 1, 1, 1, 0, 0],
                                           [1, 1, 1, 1, 1, 1, 0],
                                           [1, 1, 1, 1, 1, 1, 1]]
    assert extend_mask(None, types.SimpleNamespace(is_causal=False), q, k, 2, {}) is None


def test_plain_prefix_shapes_follow_gqa():
    model = STRATEGY.apply(llama_lm(), PLAIN, ctx("causal-lm"))
    attn = model.model.layers[0].self_attn
    assert attn.prefix_key.shape == (LLAMA["num_key_value_heads"], 4, 8)   # kv heads, P, head_dim
    expected = {f"model.layers.{i}.self_attn.prefix_{kv}" for i in range(2) for kv in ("key", "value")}
    assert trainable(model) == expected


def test_training_lowers_the_loss_and_keeps_base_bit_identical():
    model = STRATEGY.apply(bert_sequence(), REPARAM, ctx("sequence-classification"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    x, y = ids((4, 7)), torch.tensor([0, 1, 1, 0])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("make", [bert_tokens, bert_sequence], ids=["token", "sequence"])
def test_bert_padding_is_respected(make):
    model = STRATEGY.apply(make(), PLAIN, ctx())
    short, long = ids((1, 5), seed=2), ids((1, 8), seed=3)
    padded = torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], dim=1)   # right padding
    mask = torch.tensor([[1] * 5 + [0] * 3, [1] * 8])
    with torch.no_grad():
        alone = model(input_ids=short).logits
        both = model(input_ids=torch.cat([padded, long]), attention_mask=mask).logits
    real = both[:1, :5] if both.dim() == 3 else both[:1]
    assert torch.allclose(real, alone, atol=1e-5)


def test_llama_padding_is_respected():
    model = STRATEGY.apply(llama_lm(), PLAIN, ctx("causal-lm"))
    short, long = ids((1, 5), seed=2), ids((1, 8), seed=3)
    # left padding: the pad tokens come before the real ones, so only the mask keeps them out
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)
    mask = torch.tensor([[0] * 3 + [1] * 5, [1] * 8])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = model(input_ids=short).logits
        both = model(input_ids=torch.cat([padded, long]), attention_mask=mask, position_ids=positions).logits
    assert torch.allclose(both[:1, 3:], alone, atol=1e-5)


def test_llama_stays_causal():
    model = STRATEGY.apply(llama_lm(), PLAIN, ctx("causal-lm"))
    x = ids((2, 8))
    with torch.no_grad():   # a token's logits must not depend on the tokens after it
        assert torch.allclose(model(input_ids=x).logits[:, :5], model(input_ids=x[:, :5]).logits, atol=1e-5)


@pytest.mark.parametrize("cfg", [PLAIN, REPARAM], ids=["plain", "reparam"])
def test_llama_generate_with_and_without_cache(cfg):
    model = STRATEGY.apply(llama_lm(), cfg, ctx("causal-lm"))
    with torch.no_grad():   # larger prefixes so that they visibly steer the tiny model
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.mul_(5)
    x = ids((1, 6))
    base = llama_lm().generate(x, max_new_tokens=8, do_sample=False)
    cached = model.generate(x, max_new_tokens=8, do_sample=False)
    uncached = model.generate(x, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, base)


def test_llama_batched_generate_with_left_padding():
    model = STRATEGY.apply(llama_lm(), PLAIN, ctx("causal-lm"))
    short, long = ids((1, 4), seed=2), ids((1, 7), seed=3)
    pad = torch.zeros(1, 3, dtype=torch.long)
    mask = torch.tensor([[0] * 3 + [1] * 4, [1] * 7])
    both = model.generate(torch.cat([torch.cat([pad, short], 1), long]), attention_mask=mask,
                          max_new_tokens=5, do_sample=False, pad_token_id=0)
    alone = model.generate(short, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(both[0, 3:], alone[0])


def test_fold_leaves_outputs_unchanged():
    model = STRATEGY.apply(llama_lm(), REPARAM, ctx("causal-lm"))
    x = ids()
    with torch.no_grad():
        before = model(input_ids=x).logits
        fold_prefixes(model)
        after = model(input_ids=x).logits
    assert not hasattr(model, ENCODER_ATTR)
    assert not any(ENCODER_ATTR in n for n, _ in model.named_parameters())
    assert torch.allclose(before, after, atol=1e-5)
    folded = sum(p.numel() for n, p in model.named_parameters() if n.endswith(("prefix_key", "prefix_value")))
    assert STRATEGY.report(model) == {"prefix_parameters": folded} and folded == 2 * 2 * (2 * 8) * 4


def test_callback_folds_at_train_end():
    model = STRATEGY.apply(bert_tokens(), REPARAM, ctx())
    (callback,) = STRATEGY.callbacks(model, REPARAM, ctx())
    assert STRATEGY.callbacks(model, PLAIN, ctx()) == []
    callback.on_train_end(args=None, state=None, control=None, model=model)
    assert not hasattr(model, ENCODER_ATTR)
    assert model.bert.encoder.layer[0].attention.self.prefix_key.requires_grad


@pytest.mark.parametrize("make,cfg", [(bert_tokens, REPARAM), (bert_sequence, PLAIN), (llama_lm, REPARAM)],
                         ids=["bert-token-reparam", "bert-sequence-plain", "llama-reparam"])
def test_save_load_round_trip(tmp_path, make, cfg):
    model = STRATEGY.apply(make(), cfg, ctx())
    x = ids()
    with torch.no_grad():
        expected = model(input_ids=x).logits
    STRATEGY.save(model, tmp_path)   # folds first
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert saved and not any(ENCODER_ATTR in n for n in saved)
    loaded = STRATEGY.load(make, tmp_path, cfg, ctx())
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, expected, atol=1e-5)


def test_merge_refuses_and_names_export():
    model = STRATEGY.apply(bert_tokens(), PLAIN, ctx())
    assert not STRATEGY.can_merge and not STRATEGY.peft_format
    with pytest.raises(PeftkitError, match="peftkit export"):
        STRATEGY.merge(model)


def test_model_without_attention_is_a_clear_error():
    with pytest.raises(PeftkitError, match="no self-attention"):
        STRATEGY.apply(torch.nn.Sequential(torch.nn.Linear(4, 4)), PLAIN, ctx())


def test_real_token_prefix_is_those_tokens_kv_cache():
    """Li & Liang's init: a decoder's prefix starts as exactly the KV cache of P real tokens, so
    with positions continuing after them the model sees "those tokens, then x"."""
    from peftkit.strategies.prefix import init_token_ids

    cfg = PrefixConfig(num_virtual_tokens=5, reparameterize=False)
    prompt = init_token_ids(llama_lm(), cfg, tokenizer=None)
    x = ids((1, 6))
    with torch.no_grad():
        reference = llama_lm()(input_ids=torch.cat([prompt[None], x], dim=1)).logits[:, 5:]
        model = STRATEGY.apply(llama_lm(), cfg, ctx("causal-lm"))
        prefixed = model(input_ids=x, position_ids=torch.arange(5, 11)[None]).logits
    torch.testing.assert_close(prefixed, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make", [bert_tokens, llama_lm])
def test_reparameterised_prefix_starts_at_the_real_token_prefix(make):
    """The MLP's output layer starts at zero: step 0 uses the real-token prefixes, and its
    parameters still get gradients (through the zero layer's weight)."""
    plain = STRATEGY.apply(make(), dataclasses.replace(REPARAM, reparameterize=False), ctx())
    model = STRATEGY.apply(make(), REPARAM, ctx())
    x = ids()
    out = model(input_ids=x).logits
    torch.testing.assert_close(out, plain(input_ids=x).logits)
    out.square().sum().backward()
    assert getattr(model, ENCODER_ATTR).mlp[2].weight.grad.abs().sum() > 0


def test_random_init_and_init_text_errors():
    random_init = STRATEGY.apply(bert_tokens(), dataclasses.replace(PLAIN, init="random"), ctx())
    real = STRATEGY.apply(bert_tokens(), PLAIN, ctx())
    (module, _, _), (module_real, _, _) = attention_modules(random_init)[0], attention_modules(real)[0]
    assert module.prefix_key.std() < 0.1 < module_real.prefix_key.std()  # N(0, 0.02) vs real keys
    with pytest.raises(PeftkitError, match="needs the run's tokenizer"):
        STRATEGY.apply(bert_tokens(), dataclasses.replace(PLAIN, init_text="hello"), ctx())
