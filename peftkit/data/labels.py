"""Label checks before training (issue 15): the distribution per split, tags that look like typos,
and a declared label set (`data.labels`) that turns any other label into an error naming the file
and line.

    raw splits ──counts()──▶ {split: {label: n}} ──problems()──▶ warnings (typo? I- without B-?
                                                   a label in one split only?)
               ──check_declared()──▶ DataError: file, line, the label, the declared set

Token classification counts tags (O, B-PER, I-PER, ...); classification counts classes.
Torch-free, and imports nothing of peftkit's but its errors: the readers and tasks use it
(peftkit.data.readers.check_labels applies it to a recipe's data).
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path

from peftkit.errors import DataError

RARE = 0.01       # a tag this rare next to a similar frequent one looks like a typo
SIMILAR = 0.75    # difflib ratio of "B-PRE" to "B-PER" is 0.8


def counts(raw, task_name: str, names: list[str] | None = None) -> dict[str, dict[str, int]]:
    """{split: {label: count}}, labels most common first; `names` name integer class ids."""
    out = {}
    for split in raw:
        ds = raw[split]
        if task_name == "token-classification":
            c = Counter(t for tags in ds["tags"] for t in tags)
        elif task_name == "sequence-classification":
            c = Counter(names[v] if isinstance(v, int) and names and 0 <= v < len(names) else str(v)
                        for v in ds["label"])
        else:
            continue
        out[split] = dict(c.most_common())
    return out


def problems(dist: dict[str, dict[str, int]]) -> list[str]:
    """Warnings about labels that look wrong; empty when everything looks deliberate."""
    found = []
    train = dist.get("train", {})
    total = sum(train.values()) or 1
    for tag, n in train.items():
        if n / total >= RARE:
            continue
        frequent = [t for t, m in train.items() if m >= 10 * n and t != tag]
        close = difflib.get_close_matches(tag, frequent, n=1, cutoff=SIMILAR)
        if close and kind_of(tag) != kind_of(close[0]):  # not I-PER beside B-PER
            found.append(f"label {tag!r} occurs {n} time(s) in train, next to {close[0]!r} "
                         f"({train[close[0]]} times): a typo? Fix it in the data or declare the "
                         "label set with data.labels")
    for split, c in dist.items():
        begins = {t[2:] for t in c if t.startswith("B-")}
        for tag in c:
            if tag.startswith("I-") and tag[2:] not in begins:
                found.append(f"label {tag!r} occurs in {split} without any 'B-{tag[2:]}': a typo, "
                             "or an entity type whose beginnings are tagged otherwise?")
    labels = {t for c in dist.values() for t in c}
    for tag in sorted(labels):
        where = [s for s, c in dist.items() if tag in c]
        if len(dist) > 1 and len(where) == 1 and where[0] == "train":
            found.append(f"label {tag!r} occurs only in train ({dist['train'][tag]} times), in no "
                         "evaluation split: it is learned but never scored")
    return found


def kind_of(tag: str) -> str:
    return tag[2:] if tag[:2] in ("B-", "I-") else tag


def declared_set(declared: list[str], task_name: str) -> set[str]:
    """Entity types (PER) stand for their tags (B-PER, I-PER); O is always allowed in NER."""
    if task_name != "token-classification":
        return set(declared)
    out = {"O"}
    for item in declared:
        out |= {item} if item == "O" or item[:2] in ("B-", "I-") else {f"B-{item}", f"I-{item}"}
    return out


def check_declared(dist: dict, declared: list[str] | None, task_name: str, sources: dict) -> None:
    """Any label outside data.labels is an error with the file and line where it first occurs."""
    if not declared:
        return
    allowed = declared_set(declared, task_name)
    for split, c in dist.items():
        for label in c:
            if label not in allowed:
                source = sources.get(split, split)
                where = locate(source, label, task_name)
                close = difflib.get_close_matches(label, sorted(allowed), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DataError(f"{where}: label {label!r} is not in data.labels "
                                f"({', '.join(declared)}){hint}; fix the data or add it to "
                                "data.labels")


def locate(source: str, label: str, task_name: str) -> str:
    """'file, line N' of the first line where `label` occurs, else the source as given."""
    path = Path(source)
    if not path.is_file():
        return source
    try:
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError):
        return source
    for number, line in enumerate(lines, start=1):
        if matches(line, label, task_name, path.suffix.lower()):
            return f"{path}, line {number}"
    return str(path)


def matches(line: str, label: str, task_name: str, suffix: str) -> bool:
    if suffix == ".jsonl":
        try:
            record = json.loads(line)
        except ValueError:
            return False
        values = record.values() if isinstance(record, dict) else []
        flat = [x for v in values for x in (v if isinstance(v, list) else [v])]
        return label in map(str, flat)
    parts = line.split(",") if suffix == ".csv" else line.split()
    if task_name == "token-classification":
        return bool(parts) and parts[-1] == label
    return bool(parts) and parts[-1].strip() == label


def format_distribution(dist: dict[str, dict[str, int]], limit: int = 8) -> list[str]:
    """One line a split: `train: O 84.1%, B-PER 3.2%, ... (n labels)`."""
    lines = []
    for split, c in dist.items():
        total = sum(c.values()) or 1
        shown = ", ".join(f"{k} {v / total:.1%}" for k, v in list(c.items())[:limit])
        more = f", +{len(c) - limit} more" if len(c) > limit else ""
        lines.append(f"{split}: {shown}{more} ({total:,} labels)")
    return lines

