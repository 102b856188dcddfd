"""CoNLL files: one token a line (`token ... tag`, tag last), blank line between sentences,
`-DOCSTART-` lines skipped. Errors name the file and line; IOB1 files are converted to IOB2."""

from __future__ import annotations

import re
from pathlib import Path

from peftkit.errors import DataError

TAG = re.compile(r"^(O|[BI]-\S+)$")


def read_conll(path: Path) -> dict[str, list]:
    """{"tokens": [[...]], "tags": [[...]]} in IOB2."""
    from peftkit.tasks.token_classification import iob1_to_iob2, is_iob1

    tokens, tags, sent_tokens, sent_tags = [], [], [], []
    width = None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode it, e.g. "
                        f"iconv -f latin1 -t utf-8") from None
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if sent_tokens:
                tokens.append(sent_tokens)
                tags.append(sent_tags)
                sent_tokens, sent_tags = [], []
            continue
        width = width or len(parts)
        if len(parts) != width or width < 2:
            raise DataError(f"{path}, line {number}: {len(parts)} columns where the file uses "
                            f"{width} (expected `token ... tag`): {line.strip()[:60]!r}")
        if not TAG.match(parts[-1]):
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
