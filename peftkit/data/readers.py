"""Read a recipe's data into a DatasetDict with the task's standard columns.

token-classification: tokens, tags (strings, IOB2)
sequence-classification: text, [text_pair], label
causal-lm: prompt, target, [messages]   (pairs, OpenAI messages, ShareGPT, Alpaca: data/chat.py)

    data_source ─▶ which file is which split (data/layout.py, data.*_file) ─▶ read each file
    (data/files.py) ─▶ standardize ─▶ a missing validation split (or data.eval_split: null)
    held out of train (data/splits.py), a missing test split = the validation split
    ─▶ max_*_samples (after the hold-out: the first N of each part)

`read_data` also returns a DataReport: which file became which split and why, for
`peftkit inspect-data`, `validate` and the run's result.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peftkit.data.chat import (SHAPE_NAMES, alpaca_rows, causal_shape, chat_rows,  # noqa: F401
                               sharegpt_rows)
from peftkit.data.checks import check_rows, check_unseen_labels
from peftkit.data.files import read_disk, read_file  # noqa: F401 (read_file: tests, predict)
from peftkit.data.layout import FILE_KEYS, find_split_file, is_disk_folder, kind_of_split
from peftkit.data.registry import data_source
from peftkit.data.splits import hold_out
from peftkit.errors import DataError, UsageError


@dataclass
class DataReport:
    """Where each role's examples came from: `where` (file, or location:split, for messages that
    name a line), `how` (why that file), the file's own columns, and for causal LM the shape."""

    source: str
    where: dict = field(default_factory=dict)
    how: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)
    shape: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)

    def record(self) -> dict:
        """result.json's `data`: enough to tell later which examples a run saw."""
        return {"source": self.source,
                "splits": {role: {"from": self.where[role], "how": self.how[role],
                                  "examples": self.examples.get(role)} for role in self.where}}

    def same_as(self, role: str, other: str, how: str) -> None:
        """`role` is made from `other`'s examples (held out of it, or the same split)."""
        self.where[role], self.how[role] = self.where[other], how
        self.columns[role] = self.columns.get(other, [])
        if other in self.shape:
            self.shape[role] = self.shape[other]

    def guessed(self) -> bool:
        """Anything beyond standard file or split names: worth printing at the start of a run."""
        return any(not (how == "standard name" or how.startswith("split '") and "(for" not in how)
                   for how in self.how.values())

    def lines(self) -> list[str]:
        out = [f"data: {self.source}"]
        for role in self.where:
            shape = f", {self.shape[role]}" if role in self.shape else ""
            out.append(f"{role}: {self.where[role]} ({self.how[role]}{shape}); "
                       f"{self.examples.get(role, 0):,} examples; columns "
                       f"{', '.join(self.columns.get(role, [])) or '-'}")
        return out


def load_raw(recipe, task):
    """All splits the recipe uses, standardized for the task, limited by max_*_samples."""
    return read_data(recipe, task)[0]


def read_data(recipe, task):
    """(DatasetDict train / eval / test, DataReport)."""
    from datasets import DatasetDict

    try:
        source = data_source(recipe)
    except LookupError as exc:
        raise UsageError(f"data.name: {exc}") from None
    splits = needed_splits(recipe)
    found, report = read_roles(recipe, source, splits)
    done = {}  # the same file read for two roles (test_split: null) is standardized once
    raw = {}
    for role, ds in found.items():
        if id(ds) not in done:
            done[id(ds)] = standardize(ds, task, recipe, report.where[role])
        raw[role] = done[id(ds)]
        if task.name == "causal-lm":
            report.shape[role] = SHAPE_NAMES[causal_shape(ds.column_names, recipe.data)]
    check_present(raw, splits, source, report)
    fill_missing(raw, recipe, report)
    limits = {"train": recipe.data.max_train_samples, "eval": recipe.data.max_eval_samples,
              "test": recipe.data.max_test_samples}
    out = DatasetDict()
    for role in splits:  # every role, named or not (fill_missing made the unnamed ones)
        ds = raw[role]
        if limits[role] and limits[role] < len(ds):
            ds = ds.select(range(limits[role]))
        out[role] = ds
        report.examples[role] = len(ds)
    check_unseen_labels(out, task.name, report.where)
    return out, report


def check_present(raw: dict, splits: dict, source, report: DataReport) -> None:
    if "train" not in raw:
        raise DataError(f"data: no {splits['train']!r} split in {source.location} (needed as train); "
                        f"splits found: {', '.join(report.where) or 'none'}")
    for role in raw:
        if len(raw[role]) == 0:
            raise DataError(f"data: the {splits[role] or role!r} split ({report.where[role]}) has no "
                            f"examples; fill it or point data.{role}_split at another split")


def fill_missing(raw: dict, recipe, report: DataReport) -> None:
    """No validation split (or data.eval_split: null): hold one out of train (seeded). No test
    split: score the validation one (with both splits null: the held-out part)."""
    d = recipe.data
    if "eval" not in raw:
        n = len(raw["train"])
        raw["train"], raw["eval"], back = hold_out(raw["train"], d.validation_size,
                                                   recipe.train.seed, report.where["train"])
        moved = f"; {back} put back in train: their labels occur nowhere else" if back else ""
        report.same_as("eval", "train", f"held out of train: {len(raw['eval']):,} of {n:,} "
                       f"examples, data.validation_size={d.validation_size:g}, seed "
                       f"{recipe.train.seed}{moved}")
        report.how["train"] += f"; {len(raw['eval']):,} examples held out for validation"
        report.where = {r: report.where[r] for r in ("train", "eval", "test") if r in report.where}
    if "test" not in raw:
        raw["test"] = raw["eval"]
        report.same_as("test", "eval", "no test split: the validation split is scored at the end"
                       if d.test_split or d.eval_split else "data.test_split and eval_split null: the part "
                       "held out of train is scored at the end")


def read_roles(recipe, source, splits: dict):
    """(role -> Dataset with the file's own columns, DataReport)."""
    report = DataReport(source=f"{source.kind} {source.location}")
    found = {}
    if source.kind in ("builtin", "hub"):
        raw = builtin_dataset(source.location) if source.kind == "builtin" else read_hub(source.location, recipe)
        found = dict_roles(raw, splits, source.location, report)
    elif source.kind == "local" and is_disk_folder(Path(source.location)):
        loaded = read_disk(Path(source.location))
        if hasattr(loaded, "keys"):
            found = dict_roles(loaded, splits, source.location, report)
        else:  # one Dataset: like a single file
            for role in (r for r, split in splits.items() if split == splits["train"]):
                found[role] = loaded
                report.where[role], report.how[role] = source.location, "save_to_disk folder, one split"
    plan = file_plan(recipe, source, splits) if source.kind in ("local", "files") else {}
    plan.update(key_plan(recipe))  # data.train_file / validation_file / test_file win
    cache = {}
    for role, (path, why) in plan.items():
        if path not in cache:
            cache[path] = read_file(path)
        found[role] = cache[path]
        report.where[role], report.how[role] = str(path), why
    for role, ds in found.items():
        report.columns[role] = list(ds.column_names)
    order = [r for r in splits if r in report.where]  # train, eval, test
    report.where = {r: report.where[r] for r in order}
    return found, report


def key_plan(recipe) -> dict:
    """role -> (path, why) from data.train_file / validation_file / test_file."""
    return {role: (recipe.resolve_path(getattr(recipe.data, key)), f"data.{key}")
            for role, key in FILE_KEYS.items() if getattr(recipe.data, key)}


def file_plan(recipe, source, splits: dict) -> dict:
    """role -> (path, why) for a local file or folder (a save_to_disk folder is read whole)."""
    location = Path(source.location)
    if source.kind == "files" or is_disk_folder(location):
        return {}
    if location.is_file():  # one file: the training split (validation is held out of it), and
        # every role that reads the same split name (`peftkit eval --data file`: all of them)
        return {role: (location, "data.name, a single file") for role, split in splits.items()
                if split == splits["train"]}
    plan = {}
    for role, split in splits.items():
        found = find_split_file(location, split) if split is not None else None
        if found is not None:
            plan[role] = found
    return plan


def dict_roles(raw, splits: dict, location: str, report: DataReport) -> dict:
    """role -> split of a DatasetDict (builtin, hub, save_to_disk); `dev` stands in for validation."""
    found = {}
    for role, split in splits.items():
        if split is None:  # data.eval_split: null: held out of train, whatever the set has
            continue
        name = split if split in raw else next(
            (s for s in raw if kind_of_split(split) and kind_of_split(s) == kind_of_split(split)), None)
        if name is not None:
            found[role] = raw[name]
            report.where[role] = f"{location}:{name}"
            report.how[role] = f"split {name!r}" + (f" (for {split!r})" if name != split else "")
    return found


HELD = object()  # locate_roles: the role is cut out of the training split
HELD_OUT = "held out of "  # how role_origins names such a cut


def role_sources(recipe) -> dict[str, str]:
    """role (train / eval / test) -> the file it is read from (for messages that name a line)."""
    return {role: where for role, (where, _) in locate_roles(recipe).items()}


def role_origins(recipe) -> dict[str, str]:
    """role -> what its examples are, comparable between roles and recipes (bench --tune keeps a
    test set out of its trials): a file, a split of a data set (dev and validation are one), or a
    seeded cut held out of train. Directory listings only: a split a hub set lacks counts as there."""
    d = recipe.data
    out = {}
    for role, (where, split) in locate_roles(recipe).items():
        if split is HELD:
            out[role] = (f"{HELD_OUT}{where} (seed {recipe.train.seed}, data.validation_size "
                         f"{d.validation_size:g})")
        elif split is None:
            out[role] = f"file {where}"
        else:
            out[role] = f"split {where.rsplit(':', 1)[0]}:{kind_of_split(split) or split}"
    return out


def locate_roles(recipe) -> dict[str, tuple[str, str | None]]:
    """role -> (where: its file or location:split, the split name; None for a file; HELD)."""
    try:
        source = data_source(recipe)
    except LookupError:
        return {}
    splits = needed_splits(recipe)
    try:
        plan = file_plan(recipe, source, splits) if source.kind in ("local", "files") else {}
    except DataError:
        plan = {}
    plan.update(key_plan(recipe))
    # local files: a split is there when its file is found; other sets are taken at their word
    by_file = source.kind in ("local", "files") and not is_disk_folder(Path(source.location))
    out = {}
    for role, split in splits.items():
        if role in plan:
            out[role] = (str(plan[role][0]), None)
        elif split is not None and (role == "train" or not by_file):
            out[role] = (f"{source.location}:{split}", split)
    if "eval" not in out:  # as fill_missing: held out of the training split
        out["eval"] = (out["train"][0], HELD)
    if "test" not in out:
        out["test"] = out["eval"]
    return {role: out[role] for role in splits}


def check_labels(raw, recipe, sources: dict | None = None) -> tuple[dict, list[str]]:
    """(label distribution per split, warnings) of a recipe's read data; a label outside
    data.labels raises DataError with its file and line (peftkit/data/labels.py)."""
    from peftkit.data import labels

    dist = labels.counts(raw, recipe.task, recipe.data.label_names)
    labels.check_declared(dist, recipe.data.labels, recipe.task, sources or role_sources(recipe))
    return dist, labels.problems(dist)


def builtin_dataset(name: str):
    """An embedded demo set (generated by peftkit's own code) with its native column names."""
    from datasets import DatasetDict

    if name == "demo-sentiment":
        from peftkit.data.demo_cls import demo_sentiment_dataset

        return demo_sentiment_dataset()
    if name == "demo-gen":
        from peftkit.data.demo_gen import demo_gen_dataset

        return demo_gen_dataset()
    from peftkit.data.demo_ner import demo_ner_dataset

    raw = demo_ner_dataset()
    return DatasetDict({s: raw[s].rename_column("ner_tags", "tags") for s in raw})


def needed_splits(recipe) -> dict[str, str | None]:
    """role (train / eval / test) -> split name; None: no split of its own (held out of train)."""
    return {"train": recipe.data.train_split, "eval": recipe.data.eval_split,
            "test": recipe.data.test_split or recipe.data.eval_split}


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
    if task.name == "causal-lm" and causal_shape(ds.column_names, d) != "pairs":
        return causal_rows(ds, causal_shape(ds.column_names, d), where)
    mapping = {"token-classification": {d.tokens_column: "tokens", d.tags_column: "tags"},
               "sequence-classification": {d.text_column: "text", d.label_column: "label",
                                           **({d.text_pair_column: "text_pair"} if d.text_pair_column else {})},
               "causal-lm": {d.prompt_column: "prompt", d.target_column: "target"}}[task.name]
    present = set(ds.column_names)
    for src, dst in mapping.items():
        if src not in present and dst not in present:
            shapes = ("; or give chat rows: messages (OpenAI), conversations (ShareGPT) or "
                      "instruction / input / output (Alpaca)") if task.name == "causal-lm" else ""
            raise DataError(f"{where}: column {src!r} missing (columns: {', '.join(ds.column_names)}); "
                            f"set data.{column_key(recipe, src)} to the right column{shapes}")
    ds = ds.rename_columns({s: t for s, t in mapping.items() if s in present and s != t})
    ds = ds.remove_columns([c for c in ds.column_names if c not in mapping.values()])
    if task.name == "token-classification":
        ds = tags_as_names(ds)
    check_rows(ds, task.name, where, {t: s for s, t in mapping.items()})  # file, row, column
    return ds


def causal_rows(ds, shape: str, where: str):
    """Chat-shaped causal-LM rows into prompt / target (data/chat.py), then the same row checks."""
    rows = {"messages": chat_rows, "sharegpt": sharegpt_rows, "alpaca": alpaca_rows}[shape](ds, where)
    check_rows(rows, "causal-lm", where, {})
    return rows


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


