"""The plain script a user writes without peftkit: transformers.Trainer + peft, as run_ner.py does.

    python benchmarks/baseline_trainer.py --model DIR --data ../shared/data/conll2003 --strategy lora
    python benchmarks/baseline_trainer.py --task causal --model DIR --gguf-file F --data E2E_DIR

Self-contained on purpose (no peftkit import). NER: CoNLL reader, run_ner.py-style label alignment
(first sub-token labelled, the rest -100), DataCollatorForTokenClassification. Causal LM: the chat
template renders prompt and completion, the prompt's labels are -100, DataCollatorForSeq2Seq pads.
Default TrainingArguments (fp32, random batches, dynamic padding) apart from the shared
hyper-parameters. benchmarks/throughput.py runs it side by side with peftkit; it prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    """(words, tags) per sentence; `-DOCSTART-` lines and blank lines separate sentences."""
    sentences, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        words.append(parts[0])
        tags.append(parts[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def encode(sentences, tokenizer, label_id: dict, max_length: int):
    """run_ner.py's tokenize_and_align_labels with label_all_tokens=False."""
    from datasets import Dataset

    enc = tokenizer([w for w, _ in sentences], is_split_into_words=True, truncation=True,
                    max_length=max_length)
    labels = []
    for i, (_, tags) in enumerate(sentences):
        previous, row = None, []
        for w in enc.word_ids(i):
            row.append(-100 if w is None or w == previous else label_id[tags[w]])
            previous = w
        labels.append(row)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                              "token_type_ids": enc["token_type_ids"], "labels": labels})


class TokenCounter:
    """Counts real and padded token slots of every training batch (forward pre-hook, train mode only)."""

    def __init__(self, model):
        self.real = self.slots = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if module.training and mask is not None:
            self.real += int(mask.sum())
            self.slots += mask.numel()


def attention_context(rows) -> float:
    """Mean attention context per real token, sum(len²) / sum(len): the L of the FLOPs formula."""
    lengths = [len(r) for r in rows]
    return sum(n * n for n in lengths) / max(1, sum(lengths))


def entity_f1(pred_ids, label_ids, labels: list[str]) -> float:
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    true, pred = [], []
    for p_row, g_row in zip(pred_ids, label_ids):
        keep = [(p, g) for p, g in zip(p_row, g_row) if g != -100]
        true.append([labels[g] for _, g in keep])
        pred.append([labels[p] for p, _ in keep])
    return float(f1_score(true, pred, mode="strict", scheme=IOB2))  # the same definition as peftkit


def read_e2e(path: Path) -> list[tuple[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        return [(row["mr"], row["ref"]) for row in csv.DictReader(f)]


def encode_causal(pairs, tokenizer, max_length: int):
    """Chat-templated prompt + completion; the loss sees the completion only (labels -100 elsewhere)."""
    from datasets import Dataset

    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for mr, ref in pairs:
        user = [{"role": "user", "content": mr}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": ref}], tokenize=False)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        ids = (p + c)[:max_length]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append(([-100] * len(p) + c)[:max_length])
    return Dataset.from_dict(rows)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["ner", "causal"], default="ner")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --model")
    p.add_argument("--data", required=True, help="folder with train.txt + test.txt (NER) or "
                   "trainset.csv + testset_w_refs.csv (causal)")
    p.add_argument("--strategy", choices=["lora", "full"], default="lora")
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--test-samples", type=int, default=None)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=float, default=0.06)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def build(a):
    """(model, tokenizer, train set, test set, collator, labels) for the task."""
    from transformers import (AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForSeq2Seq, DataCollatorForTokenClassification)

    gguf = {"gguf_file": a.gguf_file} if a.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(a.model, **gguf)
    data = Path(a.data)
    if a.task == "causal":
        train = encode_causal(read_e2e(data / "trainset.csv")[:a.train_samples], tokenizer, a.max_length)
        test = encode_causal(read_e2e(data / "testset_w_refs.csv")[:a.test_samples], tokenizer,
                             a.max_length)
        model = AutoModelForCausalLM.from_pretrained(a.model, **gguf)
        if getattr(model, "hf_quantizer", None) is not None:  # GGUF loads de-quantized to fp32, but
            model.hf_quantizer.remove_quantization_config(model)  # Trainer refuses it otherwise
            model.config._is_quantized = False
        return model, tokenizer, train, test, DataCollatorForSeq2Seq(tokenizer), None
    train = read_conll(data / "train.txt")[:a.train_samples]
    test = read_conll(data / "test.txt")[:a.test_samples]
    labels = sorted({t for _, tags in train for t in tags})
    label_id = {t: i for i, t in enumerate(labels)}
    model = AutoModelForTokenClassification.from_pretrained(
        a.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_id)
    return (model, tokenizer, encode(train, tokenizer, label_id, a.max_length),
            encode(test, tokenizer, label_id, a.max_length), DataCollatorForTokenClassification(tokenizer),
            labels)


def main(argv=None) -> dict:
    a = parse(argv)
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(a.seed)
    model, tokenizer, train_ds, test_ds, collator, labels = build(a)
    if a.strategy == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        task_type = TaskType.CAUSAL_LM if a.task == "causal" else TaskType.TOKEN_CLS
        model = get_peft_model(model, LoraConfig(task_type=task_type, r=8, lora_alpha=16,
                                                 lora_dropout=0.1))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=a.batch_size,
                                 per_device_eval_batch_size=64 if a.task == "ner" else 8,
                                 learning_rate=a.lr, num_train_epochs=a.epochs, warmup_steps=a.warmup,
                                 seed=a.seed)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                          data_collator=collator)
        counter = TokenCounter(trainer.model)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        counter.handle.remove()
        if a.task == "causal":
            metric, value = "loss", trainer.evaluate(test_ds)["eval_loss"]
        else:
            pred = trainer.predict(test_ds)
            metric, value = "f1", entity_f1(pred.predictions.argmax(-1), pred.label_ids, labels)
    return {"side": "baseline", "strategy": a.strategy, "precision": "fp32", "train_seconds": seconds,
            "train_steps": trainer.state.global_step, "real_tokens": counter.real,
            "tokens_per_second": counter.real / seconds,
            "padding_fraction": 1 - counter.real / max(1, counter.slots),
            "attention_context": attention_context(train_ds["input_ids"]),
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "metric": metric, "metric_value": value, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
    print()
