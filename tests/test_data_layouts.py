"""Data as people have it (issue 18): every layout loads to the same examples as its CoNLL / TSV /
CSV twin, a single file gets a seeded validation split, and `validate` reads the data as `run` does.

All data is built here from peftkit's demo sets, in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from peftkit.cli import main
from peftkit.data.readers import load_raw, read_data
from peftkit.recipe import build_recipe
from peftkit.tasks import get_task

SIZES = {"train": 30, "validation": 8, "test": 8}


def demo(kind: str) -> dict[str, list[dict]]:
    if kind == "ner":
        from peftkit.data.demo_ner import generate_demo_ner

        return generate_demo_ner(sizes=SIZES)
    if kind == "cls":
        from peftkit.data.demo_cls import generate_demo_sentiment

        return generate_demo_sentiment(sizes=SIZES)
    from peftkit.data.demo_gen import generate_demo_gen

    return generate_demo_gen(sizes=SIZES)


def conll_text(rows: list[dict], sep: str = " ", extra: bool = False, docstart: bool = False) -> str:
    """CoNLL lines; extra: POS and chunk columns between token and tag (CoNLL-2003's layout)."""
    out = [f"-DOCSTART-{sep}-X-{sep}-X-{sep}O\n\n"] if docstart else []
    for i, row in enumerate(rows):
        for token, tag in zip(row["tokens"], row["ner_tags"]):
            out.append(sep.join([token, "NN", "I-NP", tag] if extra else [token, tag]) + "\n")
        out.append("\n")
        if docstart and i % 10 == 9:
            out.append(f"-DOCSTART-{sep}-X-{sep}-X-{sep}O\n\n")
    return "".join(out)


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def loaded(task: str, data: dict, base: Path, model: Path | None = None) -> dict[str, list[dict]]:
    extra = {"model": {"name": str(model)}} if model else {}
    recipe = build_recipe({"task": task, "data": data, **extra}, source=str(base / "recipe.yaml"))
    raw = load_raw(recipe, get_task(task))
    return {role: raw[role].to_list() for role in raw}


# ---------------------------------------------------------------- token classification

SPLIT_NAMES = {"train": "train", "validation": "validation", "test": "test"}


def write_split_files(folder: Path, names: dict[str, str], text) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in demo("ner").items():
        (folder / names[split]).write_text(text(rows))
    return folder


def ner_layout(kind: str, tmp: Path) -> dict:
    """The `data` section of a recipe that reads the demo NER splits from layout `kind`."""
    from datasets import Dataset, DatasetDict

    d = demo("ner")
    if kind == "split words in file names":  # as WNUT and many public NER sets ship
        write_split_files(tmp / "d", {"train": "tweets_train.conll", "validation": "annotated.dev.conll",
                                      "test": "wnut17test.conll"}, conll_text)
        return {"name": "d"}
    if kind == "CoNLL-2003 file names":
        write_split_files(tmp / "d", {"train": "eng.train", "validation": "eng.testa",
                                      "test": "eng.testb"}, conll_text)
        return {"name": "d"}
    if kind == "tabs, POS and chunk columns, -DOCSTART-":
        write_split_files(tmp / "d", {s: f"{s}.conll" for s in d},
                          lambda rows: conll_text(rows, "\t", extra=True, docstart=True))
        return {"name": "d"}
    if kind == "per-split file keys":
        names = {"train": "mine.iob", "validation": "held.bio", "test": "final.txt"}
        write_split_files(tmp / "any", names, lambda rows: conll_text(rows, extra=True))
        return {"train_file": "any/mine.iob", "validation_file": "any/held.bio",
                "test_file": "any/final.txt"}
    if kind == "save_to_disk DatasetDict (dev split)":
        DatasetDict({"train": Dataset.from_list(d["train"]), "dev": Dataset.from_list(d["validation"]),
                     "test": Dataset.from_list(d["test"])}).save_to_disk(str(tmp / "saved"))
        return {"name": "saved"}
    if kind == "save_to_disk folders as split files":
        for split, rows in d.items():
            Dataset.from_list(rows).save_to_disk(str(tmp / f"{split}_saved"))
        return {"train_file": "train_saved", "validation_file": "validation_saved",
                "test_file": "test_saved"}
    if kind == "parquet":
        (tmp / "d").mkdir()
        for split, rows in d.items():
            Dataset.from_list(rows).to_parquet(str(tmp / "d" / f"{split}.parquet"))
        return {"name": "d"}
    if kind == "arrow (stream and IPC file)":
        import pyarrow as pa
        import pyarrow.feather as feather

        (tmp / "d").mkdir()
        for split, rows in d.items():
            table = Dataset.from_list(rows).data.table
            if split == "train":  # the stream format datasets writes
                with pa.OSFile(str(tmp / "d" / "train.arrow"), "wb") as sink, \
                        pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
            else:
                feather.write_feather(table, str(tmp / "d" / f"{split}.arrow"))
        return {"name": "d"}
    if kind == "jsonl":
        (tmp / "d").mkdir()
        for split, rows in d.items():
            (tmp / "d" / f"{split}.jsonl").write_text(jsonl(rows))
        return {"name": "d"}
    raise AssertionError(kind)


NER_LAYOUTS = ["split words in file names", "CoNLL-2003 file names",
               "tabs, POS and chunk columns, -DOCSTART-", "per-split file keys",
               "save_to_disk DatasetDict (dev split)", "save_to_disk folders as split files",
               "parquet", "arrow (stream and IPC file)", "jsonl"]


@pytest.mark.parametrize("kind", NER_LAYOUTS)
def test_ner_layout_loads_the_same_examples_as_its_conll_twin(kind, tmp_path):
    twin = write_split_files(tmp_path / "twin", SPLIT_NAMES | {s: f"{s}.txt" for s in SPLIT_NAMES},
                             conll_text)
    expected = loaded("token-classification", {"name": str(twin)}, tmp_path)
    got = loaded("token-classification", ner_layout(kind, tmp_path), tmp_path)
    assert got == expected
    assert [r["tokens"] for r in got["train"]] == [r["tokens"] for r in demo("ner")["train"]]


def test_inspect_data_says_which_file_became_which_split(tmp_path, tiny_bert_dir):
    data = ner_layout("split words in file names", tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "token-classification",
                                      "model": {"name": str(tiny_bert_dir)},
                                      "data": {**data, "max_length": 16}}))
    for args in (["inspect-data", str(recipe)], ["validate", "--data-only", str(recipe)]):
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, out.output
        assert "train: " in out.output and "tweets_train.conll (file name contains 'train')" in out.output
        assert "annotated.dev.conll (file name contains 'dev')" in out.output
        assert "wnut17test.conll (file name contains 'test')" in out.output
        assert "30 examples; columns tokens, tags" in out.output
        assert "truncated at data.max_length=16: train " in out.output
        assert "ok:" not in out.output


def test_two_files_that_fit_a_split_are_an_error_naming_both(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": "a_train.conll", "validation": "dev.txt",
                                                "test": "b_train.conll"}, conll_text)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "token-classification", "data": {"name": str(folder)}}))
    out = CliRunner().invoke(main, ["validate", str(recipe)])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "a_train.conll, b_train.conll" in out.output and "data.train_file" in out.output


# ---------------------------------------------------------------- one file: validation held out

def single_file_recipe(tmp_path, **data) -> dict:
    rows = demo("ner")["train"]
    (tmp_path / "all.jsonl").write_text(jsonl(rows))
    return {"task": "token-classification", "data": {"name": "all.jsonl", **data}}


def test_a_single_file_gets_a_seeded_validation_split(tmp_path):
    raw_recipe = single_file_recipe(tmp_path, validation_size=0.2)
    recipe = build_recipe(raw_recipe, source=str(tmp_path / "r.yaml"))
    raw, report = read_data(recipe, get_task(recipe.task))
    assert (len(raw["train"]), len(raw["eval"]), len(raw["test"])) == (24, 6, 6)
    rows = [tuple(r["tokens"]) for r in demo("ner")["train"]]
    train, held = [tuple(r["tokens"]) for r in raw["train"]], [tuple(r["tokens"]) for r in raw["eval"]]
    assert sorted(train + held) == sorted(rows) and not set(train) & set(held)
    assert train == [r for r in rows if r in set(train)]  # both parts keep the file's order
    assert raw["test"].to_list() == raw["eval"].to_list()
    record = report.record()["splits"]
    assert "held out of train: 6 of 30 examples" in record["eval"]["how"] and "seed 42" in record["eval"]["how"]
    again = read_data(build_recipe(raw_recipe, source=str(tmp_path / "r.yaml")), get_task(recipe.task))[0]
    assert again["eval"].to_list() == raw["eval"].to_list()
    other = build_recipe(raw_recipe, ["train.seed=7", "data.validation_size=5"],
                         source=str(tmp_path / "r.yaml"))
    moved = load_raw(other, get_task(recipe.task))
    assert len(moved["eval"]) == 5 and moved["eval"].to_list() != raw["eval"].to_list()[:5]


def test_a_single_file_validates_and_runs(tmp_path, tiny_bert_dir):
    recipe = single_file_recipe(tmp_path)
    recipe.update(model={"name": str(tiny_bert_dir)}, output={"dir": str(tmp_path / "run")},
                  train={"max_steps": 1, "batch_size": 4, "precision": "fp32", "num_threads": 1},
                  eval={"fail_on_collapse": False})
    recipe["data"]["max_length"] = 32
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert CliRunner().invoke(main, ["validate", str(path)]).exit_code == 0
    out = CliRunner().invoke(main, ["run", str(path)])
    assert out.exit_code == 0, out.output
    assert "held out of train: 3 of 30 examples" in out.output
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["data"]["splits"]["eval"]["examples"] == 3
    assert result["examples"]["train"] == 27


def test_eval_split_null_holds_validation_out_of_train_and_ignores_the_data_s_own(tmp_path):
    folder = write_split_files(tmp_path / "d", {"train": "train.txt", "validation": "dev.txt",
                                                "test": "test.txt"}, conll_text)
    raw_recipe = {"task": "token-classification",
                  "data": {"name": str(folder), "eval_split": None, "validation_size": 5}}

    def read(*overrides):
        recipe = build_recipe(raw_recipe, list(overrides), source=str(tmp_path / "r.yaml"))
        raw, report = read_data(recipe, get_task(recipe.task))
        return {role: [tuple(r["tokens"]) for r in raw[role]] for role in raw}, report.record()

    parts, record = read()
    d = demo("ner")
    rows = [tuple(r["tokens"]) for r in d["train"]]
    assert len(parts["eval"]) == 5 and len(parts["train"]) == 25
    assert sorted(parts["train"] + parts["eval"]) == sorted(rows) and not set(parts["train"]) & set(parts["eval"])
    assert not set(parts["eval"]) & {tuple(r["tokens"]) for r in d["validation"]}  # dev.txt unread
    assert parts["test"] == [tuple(r["tokens"]) for r in d["test"]]
    splits = record["splits"]
    assert splits["eval"]["from"].endswith("train.txt") and splits["eval"]["examples"] == 5
    assert "held out of train: 5 of 30 examples" in splits["eval"]["how"] and "seed 42" in splits["eval"]["how"]
    assert read()[0]["eval"] == parts["eval"]  # the same seed cuts the same examples
    assert read("train.seed=7")[0]["eval"] != parts["eval"]
    # both null: the held-out part is scored at the end, and the data report says so
    both, record = read("data.test_split=null")
    assert both["test"] == both["eval"] == parts["eval"]
    assert "the part held out of train is scored at the end" in record["splits"]["test"]["how"]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw_recipe))
    out = CliRunner().invoke(main, ["inspect-data", str(path)])
    assert out.exit_code == 0, out.output
    assert "eval: " in out.output and "held out of train: 5 of 30 examples" in out.output
    assert "dev.txt" not in out.output


# ---------------------------------------------------------------- classification

@pytest.mark.parametrize("kind", ["save_to_disk", "parquet", "per-split keys with odd names"])
def test_classification_layout_loads_the_same_examples_as_its_tsv_twin(kind, tmp_path):
    from datasets import Dataset, DatasetDict

    d = demo("cls")
    (tmp_path / "twin").mkdir()
    for split, rows in d.items():
        lines = ["sentence\tlabel"] + [f"{r['sentence']}\t{r['label']}" for r in rows]
        (tmp_path / "twin" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    expected = loaded("sequence-classification", {"name": "twin"}, tmp_path)
    if kind == "save_to_disk":
        DatasetDict({s: Dataset.from_list(r) for s, r in d.items()}).save_to_disk(str(tmp_path / "s"))
        data = {"name": "s"}
    elif kind == "parquet":
        (tmp_path / "p").mkdir()
        for split, rows in d.items():
            Dataset.from_list(rows).to_parquet(str(tmp_path / "p" / f"reviews-{split}.parquet"))
        data = {"name": "p"}
    else:
        for split, rows in d.items():
            (tmp_path / f"{split[:2]}.jsonl").write_text(jsonl(rows))
        data = {"train_file": "tr.jsonl", "validation_file": "va.jsonl", "test_file": "te.jsonl"}
    assert loaded("sequence-classification", data, tmp_path) == expected


# ---------------------------------------------------------------- causal LM shapes

def chat_shape(kind: str, row: dict) -> dict:
    if kind == "alpaca":
        return {"instruction": row["mr"], "input": "", "output": row["ref"]}
    if kind == "sharegpt":
        return {"conversations": [{"from": "human", "value": row["mr"]},
                                  {"from": "gpt", "value": row["ref"]}]}
    return {"messages": [{"role": "user", "content": row["mr"]},
                         {"role": "assistant", "content": row["ref"]}]}


@pytest.mark.parametrize("kind", ["alpaca", "sharegpt", "messages"])
def test_causal_shape_loads_the_same_examples_as_its_csv_twin(kind, tmp_path, tiny_llama_dir):
    import csv

    d = demo("gen")
    (tmp_path / "twin").mkdir()
    (tmp_path / "chat").mkdir()
    for split, rows in d.items():
        with open(tmp_path / "twin" / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["mr", "ref"])
            writer.writeheader()
            writer.writerows(rows)
        (tmp_path / "chat" / f"{split}.jsonl").write_text(jsonl([chat_shape(kind, r) for r in rows]))
    expected = loaded("causal-lm", {"name": "twin"}, tmp_path, tiny_llama_dir)
    assert loaded("causal-lm", {"name": "chat"}, tmp_path, tiny_llama_dir) == expected
    assert set(expected["train"][0]) == {"prompt", "target"}


def test_sharegpt_with_a_system_turn_equals_openai_messages(tmp_path, tiny_llama_dir):
    sharegpt = {"conversations": [{"from": "system", "value": "be brief"},
                                  {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    messages = {"messages": [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    (tmp_path / "a.jsonl").write_text(jsonl([sharegpt] * 4))
    (tmp_path / "b.jsonl").write_text(jsonl([messages] * 4))
    a = loaded("causal-lm", {"train_file": "a.jsonl", "validation_file": "a.jsonl"}, tmp_path,
               tiny_llama_dir)
    b = loaded("causal-lm", {"train_file": "b.jsonl", "validation_file": "b.jsonl"}, tmp_path,
               tiny_llama_dir)
    assert a == b and a["train"][0]["messages"][0] == {"role": "system", "content": "be brief"}


def test_alpaca_input_follows_the_instruction_and_the_template_choice_applies(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    rows = [{"instruction": "Describe", "input": "name[Juniper]", "output": "Juniper is a pub."}] * 4
    (tmp_path / "alpaca.json").write_text(json.dumps(rows))
    recipe = build_recipe({"task": "causal-lm", "model": {"name": str(tiny_llama_dir)},
                           "data": {"train_file": "alpaca.json", "validation_size": 1,
                                    "template": "alpaca"}}, source=str(tmp_path / "r.yaml"))
    task = get_task("causal-lm")
    raw = load_raw(recipe, task)
    assert raw["train"][0]["prompt"] == "Describe\n\nname[Juniper]"
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = "{{ messages[0]['content'] }}"  # a template the alpaca choice must not use
    encoded, _ = task.encode(raw, tok, recipe, None)
    row = encoded["train"][0]
    prompt = tok.decode(row["input_ids"][:row["prompt_length"]], skip_special_tokens=True)
    assert prompt.startswith("Below is an instruction") and prompt.endswith(
        "### Instruction:\nDescribe\n\nname[Juniper]\n\n### Response:\n")


# ---------------------------------------------------------------- validate fails where run fails

def broken_sets() -> dict[str, tuple[str, dict, dict]]:
    """name -> (task, files, data keys): data sets `run` refuses (tests/test_bad_data.py has more)."""
    from test_bad_data import CONLL_CASES, JSONL_CASES, NER_OK, TSV_CASES, TSV_OK

    ok = '{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}\n'
    cases = {f"conll {k}": ("token-classification", {"train.txt": NER_OK, "test.txt": NER_OK,
                                                     "validation.txt": v[0]}, {})
             for k, v in CONLL_CASES.items()}
    cases |= {f"jsonl {k}": ("token-classification", {"train.jsonl": ok, "test.jsonl": ok,
                                                      "validation.jsonl": v[0]}, {})
              for k, v in JSONL_CASES.items()}
    cases |= {f"tsv {k}": ("sequence-classification", {"train.tsv": TSV_OK, "test.tsv": TSV_OK,
                                                       "dev.tsv": v[0]}, {})
              for k, v in TSV_CASES.items()}
    cases["too few to hold out"] = ("token-classification", {"one.conll": "EU B-ORG\n"},
                                    {"name": "data/one.conll"})
    cases["two files fit train"] = ("token-classification", {"a_train.txt": NER_OK,
                                                             "b_train.txt": NER_OK}, {})
    cases["sharegpt unknown role"] = ("causal-lm", {"train.jsonl": json.dumps(
        {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}) + "\n"}, {})
    cases["alpaca output missing"] = ("causal-lm", {"train.jsonl": '{"instruction": "a", "output": null}\n'
                                                    '{"instruction": "b", "output": "c"}\n'}, {})
    cases["not parquet"] = ("token-classification", {"train.parquet": "not parquet"}, {})
    return cases


BROKEN = broken_sets()


@pytest.mark.parametrize("case", BROKEN)
def test_validate_fails_on_the_data_sets_run_fails_on(case, tmp_path, tiny_bert_dir, tiny_llama_dir):
    task, files, data = BROKEN[case]
    folder = tmp_path / "data"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    model = tiny_llama_dir if task == "causal-lm" else tiny_bert_dir
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "task": task, "model": {"name": str(model)}, "data": {"name": "data", "max_length": 16, **data},
        "train": {"max_steps": 1, "batch_size": 2, "precision": "fp32", "num_threads": 1},
        "output": {"dir": str(tmp_path / "run")}}))
    checked = CliRunner().invoke(main, ["validate", str(path)])
    ran = CliRunner().invoke(main, ["run", str(path)])
    assert ran.exit_code == 2 and checked.exit_code == 2, (checked.output, ran.output)
    assert "Traceback" not in checked.output + ran.output
    first = lambda out: next(line for line in out.splitlines() if line.startswith("error:"))  # noqa: E731
    assert first(checked.output) == first(ran.output)


# ---------------------------------------------------------------- recipe keys

def test_new_data_keys_are_checked(tmp_path):
    from peftkit.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        build_recipe({"data": {"train_files": "x.conll", "validation_size": 1.5, "template": "chat",
                               "test_file": "missing.txt"}}, source=str(tmp_path / "r.yaml"))
    text = "\n".join(info.value.problems)
    assert "data.train_files: unknown key (did you mean 'train_file'?)" in text
    assert "data.validation_size: 1.5 is neither a share below 1" in text
    assert "data.template: 'chat' is not allowed; choose one of tokenizer, plain, alpaca" in text
    assert "data.test_file:" in text and "missing.txt is not a file" in text


def test_a_held_out_example_with_a_label_nowhere_else_goes_back_to_training(tmp_path):
    rows = [{"sentence": f"fine {i}", "label": "positive" if i % 2 else "negative"} for i in range(19)]
    rows.append({"sentence": "odd one", "label": "neutral"})  # the only example of its class
    (tmp_path / "all.jsonl").write_text(jsonl(rows))
    recipe = build_recipe({"task": "sequence-classification",
                           "data": {"name": "all.jsonl", "validation_size": 0.5}},
                          source=str(tmp_path / "r.yaml"))
    for seed in range(5):
        raw, report = read_data(recipe if seed == 0 else build_recipe(
            {"task": "sequence-classification", "data": {"name": "all.jsonl", "validation_size": 0.5},
             "train": {"seed": seed}}, source=str(tmp_path / "r.yaml")),
            get_task("sequence-classification"))
        assert "neutral" in raw["train"]["label"] and "neutral" not in raw["eval"]["label"]
        assert len(raw["train"]) + len(raw["eval"]) == 20
