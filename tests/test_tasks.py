"""Task encoders and metrics on hand-computed cases: sequence classification and causal-LM generation."""

from __future__ import annotations

import types

import pytest

from peftkit.errors import DataError
from peftkit.metrics import classification_scores, generation_scores
from peftkit.tasks import get_task
from peftkit.tasks.causal_lm import (
    IGNORE, CompletionCollator, chat_texts, fit, group_by_prompt, next_token_accuracy,
)
from peftkit.tasks.sequence_classification import names_from_values

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def recipe(max_length=64, pairs=False, **data):
    return types.SimpleNamespace(
        data=types.SimpleNamespace(max_length=max_length, text_pair_column="b" if pairs else None,
                                   label_names=data.get("label_names")),
        train=types.SimpleNamespace(eval_batch_size=4),
        eval=types.SimpleNamespace(max_new_tokens=4, num_beams=1))


def dataset_dict(**splits):
    from datasets import Dataset, DatasetDict

    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()})


# ---------------------------------------------------------------- metrics

def test_classification_scores_hand_computed():
    # class 0: P=1, R=1/2, F1=2/3; class 1: P=2/3, R=1, F1=4/5; MCC = (2*1 - 1*0) / sqrt(3*2*2*1)
    s = classification_scores([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert s["mcc"] == pytest.approx(2 / 12 ** 0.5)
    three = classification_scores([0, 1, 2], [0, 1, 1], 3)
    assert "mcc" not in three and three["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_generation_scores_use_every_reference():
    s = generation_scores(["a b c", "x y"], [["q", "a  b c"], ["x z"]])
    assert s["exact_match"] == 50.0                       # whitespace-normalised match of a 2nd reference
    assert s["rougeL"] == pytest.approx(100 * (1.0 + 0.5) / 2)  # best ref 1.0; "x y" vs "x z": LCS 1 of 2
    hyp = ["the cat sat on the mat today"]
    assert generation_scores(hyp, [["a dog ran", hyp[0]]])["bleu"] == pytest.approx(100.0)
    assert generation_scores(hyp, [["a dog ran"]])["bleu"] < 5.0
    # inputs with different numbers of references: missing streams are padded, not dropped
    mixed = generation_scores(["a b c d", "e f g h"], [["a b c d", "zz"], ["e f g h"]])
    assert mixed["bleu"] == pytest.approx(100.0)


def test_next_token_accuracy_counts_completion_positions_only():
    labels = [[IGNORE, IGNORE, 5, 6, IGNORE]]
    preds = [[9, 5, 7, 0, 0]]        # position t predicts label t+1: 5 right, 6 wrong (7)
    assert next_token_accuracy(preds, labels) == pytest.approx(0.5)


# ---------------------------------------------------------------- sequence classification

def test_label_names_from_strings_ints_and_given_names():
    assert names_from_values({"train": {"pos", "neg"}, "test": {"neg"}}, None) == ["neg", "pos"]
    assert names_from_values({"train": {0, 1}, "validation": {1}}, None) == ["0", "1"]
    assert names_from_values({"train": {0, 1}}, ["negative", "positive"]) == ["negative", "positive"]
    with pytest.raises(DataError, match="never uses"):
        names_from_values({"train": {"pos", "neg"}, "test": {"neutral"}}, None)
    with pytest.raises(DataError, match="-1"):
        names_from_values({"train": {0, 1}, "test": {-1}}, None)
    with pytest.raises(DataError, match="integers 0..N-1 or strings"):
        names_from_values({"train": {0.5, 1.0}}, None)
    with pytest.raises(DataError, match="2 names"):
        names_from_values({"train": {0, 1, 2}}, ["a", "b"])


def test_sequence_encode_pairs_labels_and_truncation(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    task = get_task("sequence-classification")
    long = "the delegation flew to kenya on monday " * 10
    raw = dataset_dict(train=[{"text": "paris is big ", "text_pair": "it is", "label": "pos"},
                              {"text": long, "text_pair": "x", "label": "neg"}])
    enc, stats = task.encode(raw, tok, recipe(max_length=16, pairs=True), ["neg", "pos"])
    row = enc["train"][0]
    assert row["labels"] == 1 and enc["train"][1]["labels"] == 0
    a = tok("paris is big", add_special_tokens=False)["input_ids"]
    b = tok("it is", add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == [tok.cls_token_id, *a, tok.sep_token_id, *b, tok.sep_token_id]
    assert row["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert len(enc["train"][1]["input_ids"]) == 16 and stats == {"truncated_train": 1}


def test_sequence_predict_returns_label_and_probabilities(tiny_bert_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    out = get_task("sequence-classification").predict(model, tok, ["good film", "bad\tpair"],
                                                      ["negative", "positive"], recipe(pairs=True))
    assert [o["text"] for o in out] == ["good film", "bad\tpair"]
    for o in out:
        assert o["label"] in ("negative", "positive")
        assert sum(o["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert o["label"] == max(o["probabilities"], key=o["probabilities"].get)


# ---------------------------------------------------------------- causal LM

def test_fit_cuts_completion_first_and_keeps_prompt_end():
    assert fit([1, 2], [3, 4], 8) == ([1, 2], [3, 4], False)
    assert fit([1, 2, 3], [4, 5, 6, 7, 8], 6) == ([1, 2, 3], [4, 5, 6], True)
    # a long prompt keeps its last max_length // 2 tokens (the assistant header sits there)
    assert fit(list(range(10)), [20, 21, 22, 23], 6) == ([7, 8, 9], [20, 21, 22], True)


def test_causal_encode_masks_prompt_and_ends_with_eos(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert not tok.chat_template
    raw = dataset_dict(train=[{"prompt": "name[Blue Heron]", "target": "Blue Heron is a pub."}])
    enc, stats = get_task("causal-lm").encode(raw, tok, recipe(), None)
    row = enc["train"][0]
    prompt = tok("name[Blue Heron]\n")["input_ids"]
    target = tok("Blue Heron is a pub.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["input_ids"] == prompt + target and row["prompt_length"] == len(prompt)
    assert row["labels"] == [IGNORE] * len(prompt) + target
    assert row["prompt"] == "name[Blue Heron]" and stats == {"truncated_train": 0}


def test_chat_template_and_messages_rows(tiny_llama_dir):
    from transformers import AutoTokenizer

    from peftkit.data.readers import chat_rows

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = CHAT_TEMPLATE
    prompt, completion = chat_texts(tok, [{"role": "user", "content": "hi"}], "yo")
    assert prompt == "<s>user\nhi</s>\n<s>assistant\n" and completion == "yo</s>\n"

    chats = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "yo"}]}]
    rows = chat_rows(dataset_dict(train=chats)["train"], "chat.jsonl")
    assert rows[0]["prompt"] == "hi" and rows[0]["target"] == "yo" and len(rows[0]["messages"]) == 2
    enc, _ = get_task("causal-lm").encode(dataset_dict(train=list(rows)), tok, recipe(), None)
    row = enc["train"][0]
    n = row["prompt_length"]
    assert tok.decode(row["input_ids"][:n]) == "<s>system\nbe brief</s>\n<s>user\nhi</s>\n<s>assistant\n"
    assert tok.decode([t for t in row["labels"] if t != IGNORE]) == "yo</s>\n"
    bad = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(DataError, match="row 1.*assistant"):
        chat_rows(dataset_dict(train=bad)["train"], "chat.jsonl")


def test_collator_pads_right_with_ignored_labels():
    batch = CompletionCollator(pad_id=0, pad_to_multiple_of=4)([
        {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], "prompt": "p"},
        {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE], [8, IGNORE, IGNORE, IGNORE]]


def test_group_by_prompt_collects_all_references():
    from datasets import Dataset

    rows = [{"input_ids": [1, 2, 9], "prompt_length": 2, "prompt": "a", "target": "r1"},
            {"input_ids": [3, 9], "prompt_length": 1, "prompt": "b", "target": "r2"},
            {"input_ids": [1, 2, 8], "prompt_length": 2, "prompt": "a", "target": "r3"}]
    ids, shown, refs = group_by_prompt(Dataset.from_list(rows))
    assert ids == [[1, 2], [3]] and shown == ["a", "b"] and refs == [["r1", "r3"], ["r2"]]


def test_causal_predict_generates_text(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():   # an untrained tiny model emits EOS at once; noise makes it talk
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    out = get_task("causal-lm").predict(model, tok, ["name[Blue Heron]", "x"], None, recipe())
    assert [o["prompt"] for o in out] == ["name[Blue Heron]", "x"]
    assert all(isinstance(o["generated"], str) for o in out) and any(o["generated"] for o in out)


# ---------------------------------------------------------------- demo sets

@pytest.mark.parametrize("module, gen, key", [("demo_cls", "generate_demo_sentiment", "sentence"),
                                              ("demo_gen", "generate_demo_gen", "mr")])
def test_demo_sets_are_deterministic_and_split_disjointly(module, gen, key):
    import importlib

    make = getattr(importlib.import_module(f"peftkit.data.{module}"), gen)
    sizes = {"train": 50, "validation": 20, "test": 20}
    a, b = make(sizes=sizes), make(sizes=sizes)
    assert a == b and make(seed=1, sizes={"train": 50}) != make(sizes={"train": 50})
    assert make(sizes={"train": 10})["test"] == make()["test"]   # resizing one split leaves the others
    train = {r[key] for r in a["train"]}
    assert len({r[key] for r in a["test"]} - train) > 10      # mostly unseen inputs at test time


def test_demo_sentiment_is_balanced_and_uses_held_out_words():
    from peftkit.data.demo_cls import NEGATIVE, POSITIVE, _pools, generate_demo_sentiment

    d = generate_demo_sentiment()
    share = sum(r["label"] == "positive" for r in d["train"]) / len(d["train"])
    assert 0.45 < share < 0.55
    held = set(_pools(POSITIVE)[1] + _pools(NEGATIVE)[1])
    words = lambda split: {w for r in d[split] for w in r["sentence"].split()}  # noqa: E731
    assert not words("train") & held and words("test") & held
