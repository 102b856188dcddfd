"""Prompt layouts for causal-LM data without the tokenizer's chat template (data.template).

    plain:   the context's turns joined by blank lines, then a newline; the completion follows
    alpaca:  Stanford Alpaca's layout (github.com/tatsu-lab/stanford_alpaca, PROMPT_DICT):
             preamble, "### Instruction:", then "### Response:" where the completion starts

`tokenizer` (the default) renders through tokenizer.apply_chat_template (tasks/causal_lm.py) and
falls back to plain where the tokenizer has no template.
"""

from __future__ import annotations

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request.")
ALPACA_HEADERS = {"user": "### Instruction:", "assistant": "### Response:"}


def plain_prompt(context: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in context) + "\n"


def alpaca_prompt(context: list[dict]) -> str:
    """A system turn replaces the preamble; earlier turns keep their headers (multi-turn data)."""
    system = [m["content"] for m in context if m["role"] == "system"]
    parts = [system[0] if system else ALPACA_PREAMBLE]
    parts += [f"{ALPACA_HEADERS.get(m['role'], '### Instruction:')}\n{m['content']}"
              for m in context if m["role"] != "system"]
    return "\n\n".join(parts) + f"\n\n{ALPACA_HEADERS['assistant']}\n"


PROMPTS = {"plain": plain_prompt, "alpaca": alpaca_prompt}
