"""`peftkit predict`: JSONL predictions of a run, export or merged folder. click only at import time."""

from __future__ import annotations

import json
import sys

import click

from peftkit.cli_errors import friendly_errors


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.argument("texts", nargs=-1)
@click.option("-i", "--input", "input_file", type=click.Path(dir_okay=False, exists=True),
              help="one text per line (.jsonl: objects with a \"text\" field); - reads stdin")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="write JSONL here, not stdout")
@click.option("--trust-remote-code", is_flag=True,
              help="run model code (auto_map *.py) that the folder or its base model ships; "
                   "never done without this flag, whatever the folder's recipe says")
@friendly_errors
def predict(folder, texts, input_file, output, trust_remote_code):
    """Predict with the model in FOLDER on TEXTS, else on --input, else on stdin lines.

    One JSON object per text: NER entities (type, text, start, end), a class label with
    probabilities, or generated text. Sentence pairs: separate the two texts with a tab.
    """
    from peftkit.errors import UsageError

    items = list(texts) or read_texts(input_file)
    if not items:
        raise UsageError("no texts: give them as arguments, in a file with --input, or on stdin")
    from peftkit.predict import predict_texts
    from peftkit.output import route_libraries

    route_libraries()  # load reports and library warnings only with -v

    records = predict_texts(folder, items, trust_remote_code=trust_remote_code)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(lines)
    else:
        click.echo(lines, nl=False)


def read_texts(path: str | None) -> list[str]:
    from peftkit.errors import UsageError

    if path is None and sys.stdin.isatty():
        raise UsageError("no texts: give them as arguments, in a file with --input, or pipe them "
                         "on stdin")
    if path in (None, "-"):
        lines, where = sys.stdin.read().splitlines(), "stdin"
    else:
        with open(path, encoding="utf-8") as f:
            lines, where = f.read().splitlines(), path
    if path and path.endswith(".jsonl"):
        return [text_of(json_line(line, where, n), where, n)
                for n, line in enumerate(lines, 1) if line.strip()]
    return [line for line in lines if line.strip()]


def json_line(line: str, where: str, n: int):
    from peftkit.errors import UsageError

    try:
        return json.loads(line)
    except ValueError as exc:
        raise UsageError(f"{where}, line {n}: not JSON ({exc})") from None


def text_of(obj, where: str, n: int) -> str:
    from peftkit.errors import UsageError

    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return obj["text"]
    raise UsageError(f"{where}, line {n}: expected a string or an object with a \"text\" field")
