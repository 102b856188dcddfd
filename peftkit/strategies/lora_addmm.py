"""LoRA's update added inside one matmul: torch.addmm(result, x·Aᵀ, Bᵀ, alpha=scale).

peft's Linear computes `result + lora_B(lora_A(dropout(x))) * scaling`: the scaling multiplies
and the sum adds a whole (tokens × out_features) tensor, two passes over the layer's output
forward and one more (the multiply's gradient) backward. With a rank-4 update those passes cost
about as much as the update's own matmuls, and LoRA on every Linear of a small encoder pays them
36 times a step. addmm adds alpha·(h·Bᵀ) into `result` inside the matmul call, whose backward
hands `result` its gradient unchanged. Same function, same dropout draws in the same order;
outputs and gradients equal peft's to rounding (tests/test_lora_addmm.py). Measured in
docs/speed.md ("LoRA against full fine-tuning").

Only peft's plain LoRA Linear layers take this path, and only for a call peft would compute as
`result + B(A(dropout(x))) * scaling`: one active adapter, not merged, not disabled, no variant
(DoRA), no bias on B, no extra arguments (a mixed-adapter batch passes adapter_names). Every
other call goes to peft's own forward. Nothing in peft offers it (no fused LoRA kernel for CPU).
"""

from __future__ import annotations

import types


def add_inside_matmul(model) -> int:
    """Give every plain LoRA Linear of `model` the addmm forward; returns how many took it."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear:  # subclasses (8/4-bit, other backends) keep their own
            module.forward = types.MethodType(addmm_forward, module)
            count += 1
    return count


def addmm_forward(self, x, *args, **kwargs):
    import torch

    from peft.tuners.lora.layer import Linear

    name = plain_adapter(self)
    if name is None or args or kwargs:
        return Linear.forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    lora_a = self.lora_A[name].weight
    h = torch.nn.functional.linear(self.lora_dropout[name](self._cast_input_dtype(x, lora_a.dtype)),
                                   lora_a)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]),
                      self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return out.view(result.shape).to(result.dtype)


def plain_adapter(layer) -> str | None:
    """The one active adapter, when peft would add it as result + B(A(dropout(x))) * scaling."""
    active = layer.active_adapters
    if layer.disable_adapters or layer.merged or len(active) != 1:
        return None
    name = active[0]
    if (name not in layer.lora_A or name in layer.lora_variant
            or layer.lora_B[name].bias is not None):
        return None
    return name
