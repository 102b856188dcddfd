"""LoRA's update added inside one matmul (peftkit/strategies/lora_addmm.py): the same outputs and
gradients as peft's own forward, dropout included; every case peft computes otherwise (DoRA, a
mixed-adapter batch, merged or disabled adapters) still goes through peft."""

from __future__ import annotations

import pytest
import torch

from peftkit.strategies.lora_addmm import add_inside_matmul, plain_adapter


def lora_pair(tiny_bert_dir, **settings):
    """Two identical LoRA models on the tiny BERT (B randomised, so the update is not zero); the
    second with the addmm forward."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForTokenClassification, logging

    logging.set_verbosity_error()
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        base = AutoModelForTokenClassification.from_pretrained(tiny_bert_dir, num_labels=5)
        config = LoraConfig(task_type="TOKEN_CLS", r=4, lora_alpha=7,  # scaling 1.75: not exact
                            target_modules=["query", "key", "value", "dense"], **settings)
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
        models.append(model)
    return models[0], models[1], add_inside_matmul(models[1])


def batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 200, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.randint(0, 5, (3, 11), generator=g)}


def forward_backward(model, inputs, seed=3):
    model.train()
    torch.manual_seed(seed)  # the same dropout masks in both models
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_outputs_and_gradients_equal_pefts(tiny_bert_dir, dropout):
    peft_model, addmm_model, patched = lora_pair(tiny_bert_dir, lora_dropout=dropout)
    assert patched == 2 * 6  # 2 layers x (query, key, value, 3 dense)
    inputs = batch()
    logits, grads = forward_backward(peft_model, inputs)
    logits2, grads2 = forward_backward(addmm_model, inputs)
    if dropout:  # other seeds draw other masks: equal outputs below mean the same masks
        assert not torch.equal(logits, forward_backward(peft_model, inputs, seed=4)[0])
    torch.testing.assert_close(logits2, logits, rtol=1e-4, atol=1e-5)
    assert grads.keys() == grads2.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads2[name], grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_dora_and_mixed_batches_stay_with_peft(tiny_bert_dir):
    _, dora, _ = lora_pair(tiny_bert_dir, use_dora=True)
    layers = [m for m in dora.modules() if hasattr(m, "lora_variant") and m.lora_A]
    assert layers and all(plain_adapter(m) is None for m in layers)

    peft_model, addmm_model, _ = lora_pair(tiny_bert_dir)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    names = ["default", "__base__", "default"]  # peft's mixed-adapter batch (peftkit serve)
    for model in (peft_model, addmm_model):
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(addmm_model(**inputs, adapter_names=names).logits,
                                   peft_model(**inputs, adapter_names=names).logits)
        with addmm_model.disable_adapter(), peft_model.disable_adapter():
            torch.testing.assert_close(addmm_model(**inputs).logits, peft_model(**inputs).logits)
        layer = next(m for m in addmm_model.modules() if hasattr(m, "lora_variant"))
        assert plain_adapter(layer) == "default"
        layer.merge()
        assert plain_adapter(layer) is None
