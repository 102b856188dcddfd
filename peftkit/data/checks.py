"""Row-level checks of data files, so that bad data fails before tokenizing with the file, row and
column in the message (not a TypeError deep inside a tokenizer or a label lookup).

    read (UTF-8, line-aware JSONL, CSV shape) ──▶ standardize (rename) ──▶ check_rows ──▶ task
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from peftkit.errors import DataError

IOB_TAG = re.compile(r"^(O|[BI]-\S+)$")
STANDARD_COLUMNS = {"token-classification": ("tokens", "tags"),
                    "sequence-classification": ("text", "text_pair", "label"),
                    "causal-lm": ("prompt", "target")}


def read_utf8(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is reported with its line (a BOM is dropped)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(utf8_problem(path, data, exc)) from None


def utf8_problem(path: Path, data: bytes | None = None,
                 exc: UnicodeDecodeError | None = None) -> str:
    """'file, line N: byte 0x.. is not UTF-8 ...' for the first undecodable byte of `path`."""
    if data is None:
        data = Path(path).read_bytes()
    if exc is None:
        try:
            data.decode("utf-8-sig")
            return f"{path}: not UTF-8 text; re-encode it as UTF-8"
        except UnicodeDecodeError as found:
            exc = found
    line = data[:exc.start].count(b"\n") + 1
    if looks_binary(data):  # issue 17: random bytes were called "probably Latin-1"
        return (f"{path}: a binary file, not text (NUL or control bytes in its first 8 KB); "
                "point data.name (or data.*_file) at the text or data file you meant")
    # cp1252 rather than latin1: it decodes every Latin-1 letter the same, and also the curly
    # quotes and dashes (0x80-0x9f) that Windows editors write, which latin1 turns into controls
    return (f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 (the file is probably "
            f"Windows-1252 or Latin-1); re-encode it, e.g. iconv -f cp1252 -t utf-8 "
            f"{Path(path).name} > fixed_{Path(path).name}")


def looks_binary(data: bytes) -> bool:
    """NUL bytes, or many control bytes other than tab/newline/CR/form feed: no text encoding
    writes those."""
    head = data[:8192]
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return b"\0" in head or controls > len(head) // 100


def read_jsonl(path: Path):
    """JSON Lines into a DataFrame; a malformed line is reported with its number."""
    import pandas as pd

    records = []
    for number, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({getattr(exc, 'msg', exc)}, "
                            f"column {getattr(exc, 'colno', '?')}): {line.strip()[:60]!r}"
                            ) from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object "
                            f"{{\"column\": value, ...}}, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no JSON lines in the file; it needs at least one example")
    return pd.DataFrame.from_records(records)


def check_table_shape(path: Path, delimiter: str, quoting: int) -> None:
    """Every CSV/TSV line has the header's number of fields. (pandas silently turns one extra field
    into an index column and shifts the row, and fills a missing one with an empty string.)"""
    import csv
    import io

    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter=delimiter,
                        quoting=quoting)
    try:
        header = next(reader, None)
        if header is None:
            return
        stray = "tab" if delimiter == "\t" else "delimiter or quote"
        for row in reader:
            if row and len(row) != len(header):
                raise DataError(f"{path}, line {reader.line_num}: {plural(len(row), 'field')} "
                                f"where the header has {len(header)} ({', '.join(header)[:80]}); "
                                f"a stray {stray} or a missing value?")
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: {exc}") from None


def check_unseen_labels(splits: dict, task_name: str, sources: dict[str, str]) -> None:
    """A class in the eval/test split that the (possibly max_train_samples-limited) training split
    never shows cannot be learned, and its scores would be meaningless."""
    if task_name != "sequence-classification":
        return  # token classification checks its tags in TokenClassification.label_names
    seen = set(splits["train"].unique("label"))
    for role in ("eval", "test"):
        unseen = set(splits[role].unique("label")) - seen if role in splits else set()
        if unseen:
            raise DataError(f"{sources.get(role, role)}: labels {sorted(map(str, unseen))} never "
                            f"occur in the training data ({sources.get('train', 'train')}); the "
                            "model cannot learn them. Add training examples with these labels, "
                            "raise data.max_train_samples, or fix the labels.")


def check_rows(ds, task_name: str, where: str, source_columns: dict[str, str]) -> None:
    """Fail on the first row whose standard columns cannot be used by the task.

    `source_columns` maps standard names (tokens, text, ...) to the file's column names."""
    present = [c for c in STANDARD_COLUMNS.get(task_name, ()) if c in ds.column_names]
    if not present or columns_look_fine(ds.with_format("arrow")[:], present):
        return
    columns = {c: ds[c] for c in present}  # slow path: find and describe the first bad row
    for i in range(len(ds)):
        row = {c: values[i] for c, values in columns.items()}
        problem = (token_row_problem(row, source_columns) if task_name == "token-classification"
                   else text_row_problem(row, source_columns))
        if problem:
            raise DataError(f"{where}, row {i + 1}: {problem}")


def columns_look_fine(table, present: list[str]) -> bool:
    """Whole-column Arrow checks (a few ms for 60k rows); False sends check_rows row by row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def is_text(t) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    def strings(col) -> bool:
        return is_text(col.type) and col.null_count == 0

    def word_lists(col) -> bool:
        return ((pa.types.is_list(col.type) or pa.types.is_large_list(col.type))
                and is_text(col.type.value_type) and col.null_count == 0
                and pc.list_flatten(col).null_count == 0)

    cols = {c: table.column(c) for c in present}
    if "tokens" in cols:
        tokens, tags = cols["tokens"], cols["tags"]
        if not (word_lists(tokens) and word_lists(tags)):
            return False
        lengths = pc.list_value_length(tokens)
        if not pc.all(pc.equal(lengths, pc.list_value_length(tags))).as_py() \
                or pc.min(lengths).as_py() == 0:
            return False
        return all(IOB_TAG.match(t) for t in pc.unique(pc.list_flatten(tags)).to_pylist())
    for name, col in cols.items():
        if name != "label" and not strings(col):
            return False
    label = cols.get("label")
    if label is None or (pa.types.is_integer(label.type) and label.null_count == 0):
        return True
    return strings(label) and not pc.any(pc.equal(pc.utf8_trim_whitespace(label), "")).as_py()


def token_row_problem(row: dict, names: dict) -> str | None:
    tokens, tags = row["tokens"], row["tags"]
    tok_col, tag_col = names.get("tokens", "tokens"), names.get("tags", "tags")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return f"column {tok_col!r} must be a list of words, got {short(tokens)}"
    if not isinstance(tags, list):
        return f"column {tag_col!r} must be a list of tags, got {short(tags)}"
    if len(tokens) != len(tags):
        return (f"{len(tokens)} words in {tok_col!r} but {len(tags)} tags in {tag_col!r}; "
                "every word needs exactly one tag")
    if not tokens:
        return f"no words in {tok_col!r} (remove empty examples)"
    for tag in tags:
        if not isinstance(tag, str):
            return (f"tag {short(tag)} in {tag_col!r} is not a string; write tag names (O, B-PER, "
                    "I-PER) rather than numbers")
        if not IOB_TAG.match(tag):
            return f"tag {tag!r} in {tag_col!r} is not IOB (O, B-TYPE or I-TYPE)"
    return None


def text_row_problem(row: dict, names: dict) -> str | None:
    for column, value in row.items():
        name = names.get(column, column)
        if column == "label":
            if missing(value) or (isinstance(value, str) and not value.strip()):
                return f"label column {name!r} is empty"
            whole = isinstance(value, float) and value.is_integer()
            if not (isinstance(value, (str, int)) or whole):
                return f"label {short(value)} in {name!r} is not a class (an integer or a name)"
        elif not isinstance(value, str):
            return f"column {name!r} must be text, got {short(value)}" + (
                " (missing value)" if missing(value) else "")
    return None


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
