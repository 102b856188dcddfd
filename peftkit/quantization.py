"""bitsandbytes settings for 8-bit (LLM.int8) and 4-bit (NF4) bases."""

from __future__ import annotations


def bnb_config(mode: str, task):
    import torch
    from transformers import BitsAndBytesConfig

    # The task head is new and trains in full precision; quantizing it breaks peft's copy of it.
    skip = list(task.head_names) + (["lm_head"] if task.name == "causal-lm" else [])
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16,
                              llm_int8_skip_modules=skip)
