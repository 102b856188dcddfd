"""Causal-LM generation: prompt -> completion (data-to-text, instructions, chat).

    prompt / chat messages ──data.template: the tokenizer's chat template (plain text where it has
                             none), plain or alpaca──▶ prompt ids │ completion ids
    labels:                                                                 -100 ... │ completion ids
    evaluation: loss -> perplexity; greedy/beam generation from the prompt ids (left-padded
    batches) -> exact match, BLEU, ROUGE-L against every reference of the same prompt

Rows with the same prompt (E2E: one meaning representation, several human references) train as
separate examples but are generated once and scored against all their references.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from peftkit.tasks.base import IGNORE, Task
from peftkit.tasks.templates import PROMPTS, plain_prompt



class CausalLM(Task):
    name = "causal-lm"
    auto_class = "AutoModelForCausalLM"
    metric_modules = ("sacrebleu", "rouge_score.rouge_scorer")
    peft_task_type = "CAUSAL_LM"
    head_names: list[str] = []      # lm_head is pretrained: no new head to train in full
    default_metric = "bleu"
    metric_names = ("bleu", "rougeL", "exact_match", "perplexity", "token_accuracy", "loss")
    selection_metric = ("loss", False)  # BLEU needs generation, which runs only on test
    columns = ("prompt", "target")
    auto_balance_ratio = None          # no classes
    generates = True
    onnx_refusal = ("generation calls the model once per new token with a growing key/value "
                    "cache, which one exported forward pass does not carry")
    gguf = True

    def encode(self, raw, tokenizer, recipe, labels):
        max_length = recipe.data.max_length

        def encode_batch(batch):
            contexts = batch["messages"] if "messages" in batch else \
                [[{"role": "user", "content": p}] for p in batch["prompt"]]
            prompts, completions = render_batch(tokenizer, contexts, batch["target"], template(recipe))
            out = {"input_ids": [], "labels": [], "prompt_length": [], "truncated": []}
            for p, c in zip(prompts, completions):
                p, c, cut = fit(p, c, max_length)
                out["input_ids"].append(p + c)
                out["labels"].append([IGNORE] * len(p) + c)
                out["prompt_length"].append(len(p))
                out["truncated"].append(cut)
            return out

        from datasets import DatasetDict

        # per split: chat data keeps `messages` only where a split has multi-turn contexts
        encoded = DatasetDict({split: ds.map(encode_batch, batched=True, desc="tokenizing",
                                             remove_columns=[c for c in ds.column_names
                                                             if c not in self.columns])
                               for split, ds in raw.items()})
        stats = {f"truncated_{split}": int(sum(encoded[split]["truncated"])) for split in encoded}
        return encoded.remove_columns("truncated"), stats

    def collator(self, tokenizer, pad_to_multiple_of=None):
        return CompletionCollator(tokenizer.pad_token_id, pad_to_multiple_of)

    def training_loss(self):
        """The output layer on completion positions only, fp32 cross-entropy in chunks."""
        from peftkit.tasks.completion_loss import CompletionLoss

        return CompletionLoss()

    def preprocess_logits(self, logits, labels):
        if isinstance(logits, tuple):
            logits = logits[0]
        # prompt tuning prepends virtual tokens: keep the positions that have labels
        return logits[:, -labels.shape[1]:].argmax(dim=-1)

    def probe_metrics(self):
        """A decoder's probe is scored by its held-back loss alone (every token is a class)."""
        return None, None

    def compute_metrics(self, labels, recipe):
        def compute(pred):
            return {"token_accuracy": next_token_accuracy(pred.predictions, pred.label_ids)}

        return compute

    def evaluate(self, trainer, dataset, recipe, labels, prefix, out_dir):
        """Loss and perplexity over the completions, then generation scored against all references."""
        metrics = trainer.evaluate(dataset, metric_key_prefix=prefix)
        if f"{prefix}_loss" in metrics:
            metrics[f"{prefix}_perplexity"] = math.exp(min(metrics[f"{prefix}_loss"], 50.0))
        prompt_ids, shown, references = group_by_prompt(dataset)
        with trainer.accelerator.autocast():
            predictions = generate(trainer.model, trainer.processing_class, prompt_ids, recipe)
        from peftkit.metrics import generation_scores

        from peftkit.health import generation_stats

        scores = {f"{prefix}_{k}": v for k, v in {**generation_scores(predictions, references),
                                                  **generation_stats(predictions)}.items()}
        metrics.update(scores)
        trainer.log({k: v for k, v in metrics.items() if k in scores or k.endswith("_perplexity")})
        if trainer.is_world_process_zero():
            write_generations(Path(out_dir) / f"generations_{prefix}.jsonl",
                              shown, predictions, references)
        return metrics

    def predict(self, model, tokenizer, texts, labels, recipe, adapter_names=None):
        prompts = chat_prompts(tokenizer, [[{"role": "user", "content": t}] for t in texts], recipe)
        generated = generate(model, tokenizer, prompts, recipe, adapter_names)
        return [{"prompt": t, "generated": g} for t, g in zip(texts, generated)]

    def predict_settings(self, recipe) -> tuple:
        return (recipe.data.max_length, template(recipe), recipe_sampling(recipe),
                recipe.train.eval_batch_size)


def chat_prompts(tokenizer, contexts: list[list[dict]], recipe) -> list[list[int]]:
    """Prompt ids of chat contexts as the run rendered its prompts (data.template), ending where
    the answer starts, cut to data.max_length from the front."""
    prompts, _ = render_batch(tokenizer, contexts, [""] * len(contexts), template(recipe))
    return [fit(p, [], recipe.data.max_length)[0] for p in prompts]


# ---------------------------------------------------------------- encoding

def template(recipe) -> str:
    """data.template (recipes saved before it existed render as `tokenizer`)."""
    return getattr(recipe.data, "template", "tokenizer")


def render_batch(tokenizer, contexts: list[list[dict]], targets: list[str], layout: str = "tokenizer"):
    """(prompt ids, completion ids) per example: the tokenizer's chat template where data.template
    is `tokenizer` and the tokenizer has one, else a text layout (tasks/templates.py)."""
    if layout == "tokenizer" and tokenizer.chat_template:
        prompt_texts, completion_texts = [], []
        for context, target in zip(contexts, targets):
            p, c = chat_texts(tokenizer, context, target)
            prompt_texts.append(p)
            completion_texts.append(c)
        return (tokenizer(prompt_texts, add_special_tokens=False)["input_ids"],
                tokenizer(completion_texts, add_special_tokens=False)["input_ids"])
    # a text layout: the prompt, then the completion + EOS (it learns to stop)
    prompt_texts = [PROMPTS.get(layout, plain_prompt)(context) for context in contexts]
    completions = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return tokenizer(prompt_texts)["input_ids"], [c + eos if t else c for c, t in zip(completions, targets)]


def chat_texts(tokenizer, context: list[dict], target: str) -> tuple[str, str]:
    """The templated prompt (ending in the assistant header) and the templated completion."""
    prompt = tokenizer.apply_chat_template(context, add_generation_prompt=True, tokenize=False)
    if not target:
        return prompt, ""
    full = tokenizer.apply_chat_template(context + [{"role": "assistant", "content": target}],
                                         tokenize=False)
    if full.startswith(prompt):
        return prompt, full[len(prompt):]          # e.g. "answer<|im_end|>\n": learns to stop
    return prompt, target + (tokenizer.eos_token or "")   # templates that rewrite earlier turns


def fit(prompt: list[int], completion: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """Cut an example to max_length: the completion first, but the prompt keeps at least half,
    and it keeps its end (the assistant header right before the completion)."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion, False
    room = max(max_length - len(completion), max_length // 2)
    prompt = prompt[-room:] if len(prompt) > room else prompt
    return prompt, completion[:max_length - len(prompt)], True


class CompletionCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100); other columns dropped."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id, self.multiple = pad_id, pad_to_multiple_of

    def __call__(self, features: list[dict]):
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        ids, mask, labels = [], [], []
        for f in features:
            pad = longest - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
            labels.append(list(f["labels"]) + [IGNORE] * pad)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                "labels": torch.tensor(labels)}


# ---------------------------------------------------------------- evaluation

def next_token_accuracy(pred_ids, label_ids) -> float:
    """Share of completion tokens predicted exactly by the previous position's argmax."""
    import numpy as np

    preds, golds = np.asarray(pred_ids)[:, :-1], np.asarray(label_ids)[:, 1:]
    keep = golds != IGNORE
    return float((preds[keep] == golds[keep]).mean()) if keep.any() else 0.0


def group_by_prompt(dataset):
    """(prompt ids, prompt text, references) per distinct prompt, in first-seen order."""
    groups: dict[tuple, int] = {}
    prompt_ids, shown, references = [], [], []
    for row in dataset.select_columns(["input_ids", "prompt_length", "prompt", "target"]):
        ids = row["input_ids"][:row["prompt_length"]]
        key = (row["prompt"], tuple(ids))   # text too: truncation may leave two prompts equal ids
        if key not in groups:
            groups[key] = len(prompt_ids)
            prompt_ids.append(list(ids))
            shown.append(row["prompt"])
            references.append([])
        references[groups[key]].append(row["target"])
    return prompt_ids, shown, references


@dataclass(frozen=True)
class Sampling:
    """How to continue a prompt: the recipe's eval settings (greedy or beam), or a request's."""

    max_new_tokens: int
    num_beams: int = 1
    temperature: float = 0.0      # 0: greedy; above: sampled at this temperature
    top_p: float = 1.0

    def kwargs(self) -> dict:
        sample = self.temperature > 0
        return {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                "do_sample": sample,
                **({"temperature": self.temperature, "top_p": self.top_p} if sample else {})}


def recipe_sampling(recipe) -> Sampling:
    return Sampling(recipe.eval.max_new_tokens, recipe.eval.num_beams)


def generate(model, tokenizer, prompts: list[list[int]], recipe, adapter_names=None) -> list[str]:
    """Greedy (or beam) continuations of token-id prompts, batched with left padding."""
    rows = generate_ids(model, tokenizer, prompts, recipe_sampling(recipe),
                        recipe.train.eval_batch_size, adapter_names)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in rows]


def generate_ids(model, tokenizer, prompts: list[list[int]], sampling: Sampling, batch_size: int,
                 adapter_names: list[str] | None = None) -> list[list[int]]:
    """The new token ids of each prompt, up to and without its first EOS (padding dropped).
    `adapter_names` (one per prompt): peft's mixed-adapter batch (`peftkit serve`)."""
    import torch

    model.eval()
    device = next(p.device for p in model.parameters())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together
    rows: dict[int, list[int]] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (longest - len(prompts[i])) + prompts[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (longest - len(prompts[i])) + [1] * len(prompts[i]) for i in idx],
                            device=device)
        names = {} if adapter_names is None else {"adapter_names": [adapter_names[i] for i in idx]}
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id, **sampling.kwargs(), **names)
        for row, i in enumerate(idx):
            rows[i] = until_eos(gen[row, longest:].tolist(), tokenizer.eos_token_id)
    return [rows[i] for i in range(len(prompts))]


def until_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[:ids.index(eos)] if eos is not None and eos in ids else ids


def write_generations(path: Path, prompts: list[str], predictions: list[str], references) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p, g, refs in zip(prompts, predictions, references):
            f.write(json.dumps({"prompt": p, "generated": g, "references": refs}, ensure_ascii=False) + "\n")


TASK = CausalLM()
