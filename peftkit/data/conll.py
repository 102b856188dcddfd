"""CoNLL files: one token a line (`token ... tag`, tag last), blank line between sentences,
`-DOCSTART-` lines skipped. Errors name the file and line; IOB1 files are converted to IOB2.

Columns are split on tabs where the file's first token line has one (a token may then hold a
space), else on any run of spaces: `EU NNP B-NP B-ORG`, `EU\tB-ORG` and `EU B-ORG` all read as
token EU, tag B-ORG (POS and chunk columns in between are ignored)."""

from __future__ import annotations

from pathlib import Path

from peftkit.data.checks import IOB_TAG, read_utf8
from peftkit.errors import DataError


def read_conll(path: Path) -> dict[str, list]:
    """{"tokens": [[...]], "tags": [[...]]} in IOB2."""
    from peftkit.tasks.token_classification import iob1_to_iob2, is_iob1

    tokens, tags, sent_tokens, sent_tags = [], [], [], []
    width = None
    lines = read_utf8(path).split("\n")  # (not splitlines: \x85, \u2028 are text, not line ends)
    split = columns_splitter(lines)
    for number, line in enumerate(lines, start=1):
        parts = split(line)
        if not parts or parts[0] == "-DOCSTART-":
            if sent_tokens:
                tokens.append(sent_tokens)
                tags.append(sent_tags)
                sent_tokens, sent_tags = [], []
            continue
        width = width or len(parts)
        if width < 2:
            raise DataError(f"{path}, line {number}: one column; expected `token ... tag` (the tag "
                            f"last, separated by spaces or tabs): {line.strip()[:60]!r}")
        if len(parts) != width:
            raise DataError(f"{path}, line {number}: {len(parts)} columns where the file uses "
                            f"{width} (expected `token ... tag`): {line.strip()[:60]!r}")
        if not IOB_TAG.match(parts[-1]):
            raise DataError(f"{path}, line {number}: tag {parts[-1]!r} is not IOB "
                            "(O, B-TYPE or I-TYPE)")
        sent_tokens.append(parts[0])
        sent_tags.append(parts[-1])
    if sent_tokens:
        tokens.append(sent_tokens)
        tags.append(sent_tags)
    if is_iob1(tags):
        tags = [iob1_to_iob2(t) for t in tags]
    return {"tokens": tokens, "tags": tags}


def columns_splitter(lines: list[str]):
    """Tab-separated where the first token line has a tab, else whitespace-separated."""
    first = next((line for line in lines if line.strip()), "")
    return str.split if "\t" not in first else tab_fields


def tab_fields(line: str) -> list[str]:
    """Tab-separated fields; a trailing tab (some exporters write one) adds no column."""
    parts = [p.strip() for p in line.split("\t")] if line.strip() else []
    while parts and not parts[-1]:
        parts.pop()
    return parts
