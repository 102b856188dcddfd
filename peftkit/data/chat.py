"""Causal-LM data in the shapes people have it, read into the task's columns.

    prompt / target columns (data.prompt_column, data.target_column)   E2E: mr, ref
    OpenAI messages:  {"messages": [{"role": "user", "content": ...}, ..., {"role": "assistant", ...}]}
    ShareGPT:         {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}
    Alpaca:           {"instruction": ..., "input": ..., "output": ...}
        ──▶ prompt (the last user text), target (the answer), [messages: the turns before it]

`messages` is kept only where the context is more than one user turn (a system prompt, earlier
turns): a single user turn encodes the same as a prompt, so every shape of the same examples
loads to the same rows as its prompt/target twin.
"""

from __future__ import annotations

from peftkit.errors import DataError

SHAPE_NAMES = {"pairs": "prompt/target columns", "messages": "OpenAI messages rows",
               "sharegpt": "ShareGPT conversations rows", "alpaca": "Alpaca instruction/output rows"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "model": "assistant",
                  "system": "system"}


def causal_shape(columns, data) -> str:
    """Which shape a split's columns are; the recipe's prompt/target columns win when present."""
    present = set(columns)
    if {data.prompt_column, "prompt"} & present and {data.target_column, "target"} & present:
        return "pairs"
    if "messages" in present:
        return "messages"
    if "conversations" in present:
        return "sharegpt"
    if {"instruction", "output"} <= present:
        return "alpaca"
    return "pairs"  # not there either: standardize names the missing column


def alpaca_rows(ds, where: str):
    """instruction (+ input after a blank line) is the prompt, output the target."""
    def join(batch, indices):
        inputs = batch["input"] if "input" in batch else [""] * len(indices)
        prompts, targets = [], []
        for i, ins, extra, out in zip(indices, batch["instruction"], inputs, batch["output"]):
            for name, value in (("instruction", ins), ("output", out)):
                if not isinstance(value, str):
                    raise DataError(f"{where}, row {i + 1}: {name!r} must be text, got {value!r}"[:300])
            prompts.append(f"{ins}\n\n{extra}" if isinstance(extra, str) and extra.strip() else ins)
            targets.append(out)
        return {"prompt": prompts, "target": targets}

    return ds.map(join, batched=True, with_indices=True, remove_columns=ds.column_names,
                  desc="reading Alpaca rows")


def sharegpt_rows(ds, where: str):
    """ShareGPT `conversations` ({from, value}) as OpenAI messages, then chat_rows."""
    def convert(batch, indices):
        out = []
        for i, turns in zip(indices, batch["conversations"]):
            if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
                raise DataError(f"{where}, row {i + 1}: `conversations` must be a list of "
                                "{from, value} turns")
            out.append([sharegpt_turn(t, i, where) for t in turns])
        return {"messages": out}

    ds = ds.map(convert, batched=True, with_indices=True, remove_columns=ds.column_names,
                desc="reading ShareGPT rows")
    return chat_rows(ds, where)


def sharegpt_turn(turn: dict, i: int, where: str) -> dict:
    who = str(turn.get("from", turn.get("role", ""))).lower()
    if who not in SHAREGPT_ROLES:
        raise DataError(f"{where}, row {i + 1}: turn from {who!r} is not one of "
                        f"{', '.join(SHAREGPT_ROLES)} (ShareGPT `from`)")
    return {"role": SHAREGPT_ROLES[who], "content": str(turn.get("value", turn.get("content", "")))}


def chat_rows(ds, where: str):
    """Chat data: the last message (the assistant's) is the target, the turns before it the context.

    Columns after: prompt (the context's last user text), target, and messages (the context
    turns) where a context is more than one user turn."""
    def split_turns(batch, indices):
        out = {"messages": [], "prompt": [], "target": []}
        for i, turns in zip(indices, batch["messages"]):
            if not turns or not isinstance(turns, list) or turns[-1].get("role") != "assistant" \
                    or len(turns) < 2:
                raise DataError(f"{where}: row {i + 1}: `messages` must be a list of "
                                "{role, content} turns ending with an assistant turn after at least "
                                "one user turn")
            context = [{"role": str(t["role"]), "content": str(t["content"])} for t in turns[:-1]]
            out["messages"].append(context)
            out["prompt"].append(next((t["content"] for t in reversed(context) if t["role"] == "user"),
                                      context[-1]["content"]))
            out["target"].append(str(turns[-1]["content"]))
        return out

    ds = ds.map(split_turns, batched=True, with_indices=True, remove_columns=ds.column_names,
                desc="splitting chat turns")
    single = all(len(m) == 1 and m[0]["role"] == "user" for m in ds["messages"])
    return ds.remove_columns("messages") if single else ds
