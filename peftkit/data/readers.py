"""Read a recipe's data into a DatasetDict with the task's standard columns.

token-classification: tokens, tags (strings, IOB2)
sequence-classification: text, [text_pair], label
causal-lm: prompt, target
"""

from __future__ import annotations

from pathlib import Path

from peftkit.data.registry import resolve_data, split_file
from peftkit.errors import DataError, UsageError

TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


def load_raw(recipe, task):
    """All splits the recipe uses, standardized for the task, limited by max_*_samples."""
    from datasets import DatasetDict

    try:
        source = resolve_data(recipe)
    except LookupError as exc:
        raise UsageError(f"data.name: {exc}") from None
    splits = needed_splits(recipe)
    if source.kind == "builtin":
        from peftkit.data.demo_ner import demo_ner_dataset

        raw = demo_ner_dataset()
        raw = DatasetDict({s: raw[s].rename_column("ner_tags", "tags") for s in raw})
    elif source.kind == "local":
        raw = read_local(Path(source.location), splits)
    else:
        raw = read_hub(source.location, recipe)
    raw = DatasetDict({s: standardize(raw[s], task, recipe, f"{source.location}:{s}")
                       for s in splits.values() if s in raw})
    for role, split in splits.items():
        if split not in raw:
            raise DataError(f"data: no {split!r} split in {source.location} (needed as {role}); "
                            f"splits found: {', '.join(raw) or 'none'}")
        if len(raw[split]) == 0:
            raise DataError(f"data: the {split!r} split of {source.location} is empty")
    limits = {"train": recipe.data.max_train_samples, "eval": recipe.data.max_eval_samples,
              "test": recipe.data.max_test_samples}
    out = DatasetDict()
    for role, split in splits.items():
        ds = raw[split]
        if limits[role] and limits[role] < len(ds):
            ds = ds.select(range(limits[role]))
        out[role] = ds
    return out


def needed_splits(recipe) -> dict[str, str]:
    """role (train / eval / test) -> split name."""
    return {"train": recipe.data.train_split, "eval": recipe.data.eval_split,
            "test": recipe.data.test_split or recipe.data.eval_split}


def read_local(path: Path, splits: dict[str, str]):
    from datasets import DatasetDict

    if path.is_file():  # one file: it is the training split only
        return DatasetDict({splits["train"]: read_file(path)})
    out = DatasetDict()
    for split in dict.fromkeys(splits.values()):
        found = split_file(path, split)
        if found is not None:
            out[split] = read_file(found)
    return out


def read_file(path: Path):
    from datasets import Dataset

    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        from peftkit.data.conll import read_conll

        return Dataset.from_dict(read_conll(path))
    kwargs = {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}
    try:
        return Dataset.from_pandas(read_table(path, suffix, kwargs), preserve_index=False)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; re-encode it as UTF-8") from None
    except ValueError as exc:
        raise DataError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None


def read_table(path: Path, suffix: str, kwargs: dict):
    import pandas as pd

    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".json", ".jsonl"):
        return pd.read_json(path, lines=suffix == ".jsonl")
    return pd.read_csv(path, keep_default_na=False, **kwargs)


def read_hub(name: str, recipe):
    from datasets import load_dataset

    try:
        return load_dataset(name, recipe.data.config)
    except Exception as exc:  # datasets raises many types for "not there"; all mean the same here
        raise UsageError(f"data.name: cannot load {name!r} from the hub ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}). Offline? Point data.data_dir or "
                         "PEFTKIT_DATA_DIR at a local copy.") from None


def standardize(ds, task, recipe, where: str):
    """Rename the recipe's columns to the task's standard ones; ids of class labels to names."""
    d = recipe.data
    mapping = {"token-classification": {d.tokens_column: "tokens", d.tags_column: "tags"},
               "sequence-classification": {d.text_column: "text", d.label_column: "label",
                                           **({d.text_pair_column: "text_pair"} if d.text_pair_column else {})},
               "causal-lm": {d.prompt_column: "prompt", d.target_column: "target"}}[task.name]
    present = set(ds.column_names)
    for src, dst in mapping.items():
        if src not in present and dst not in present:
            raise DataError(f"{where}: column {src!r} missing (columns: {', '.join(ds.column_names)}); "
                            f"set data.{column_key(recipe, src)} to the right column")
    ds = ds.rename_columns({s: t for s, t in mapping.items() if s in present and s != t})
    ds = ds.remove_columns([c for c in ds.column_names if c not in mapping.values()])
    if task.name == "token-classification":
        ds = tags_as_names(ds)
    return ds


def column_key(recipe, column: str) -> str:
    for key, value in vars(recipe.data).items():
        if key.endswith("_column") and value == column:
            return key
    return "<task>_column"


def tags_as_names(ds):
    """Hub NER sets store tags as ClassLabel ids; the pipeline works with tag strings."""
    feature = ds.features["tags"]
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    if names:
        return ds.map(lambda b: {"tags": [[names[i] for i in t] for t in b["tags"]]}, batched=True)
    return ds
