"""Model code inside folders peftkit loads: never run unless the command line says so.

A run, export or merged folder is data someone handed you. Its recipe.yaml, config.json or
tokenizer_config.json may name Python code (`auto_map`) that transformers would import with
`trust_remote_code=True`. Only the command being run decides that (`--trust-remote-code` on
predict / eval / merge / export); nothing read from the folder does (issue 17).

    announce(folders, trust)   warning naming the code files (trusted) / note that they are ignored
    refusing_code(folders)     transformers' "needs custom code" ValueError -> one clear UsageError
    strip_code(folder)         an output folder without *.py and without auto_map entries

Torch-free.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from peftkit.errors import UsageError

CONFIG_FILES = ("config.json", "tokenizer_config.json")
FLAG = "--trust-remote-code"


def code_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    return sorted(folder.rglob("*.py")) if folder.is_dir() else []


def auto_maps(folder: Path) -> list[str]:
    """The config files in `folder` that name model code (their `auto_map`)."""
    found = []
    for name in CONFIG_FILES:
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(str(Path(folder) / name))
    return found


def describe(folders: list[Path]) -> str:
    files = [str(p) for f in folders for p in code_files(f)]
    maps = [m for f in folders for m in auto_maps(f)]
    parts = ([f"code files {', '.join(files[:6])}"] if files else []) + \
            ([f"auto_map in {', '.join(maps[:4])}"] if maps else [])
    return "; ".join(parts)


def announce(folders: list[Path], trust: bool) -> None:
    """Say what code a load may run (trusted) or which code it leaves alone (not trusted)."""
    what = describe(folders)
    if not what or not (trust or any(auto_maps(f) for f in folders)):
        return  # untrusted *.py that no config names are never imported: nothing to say
    if trust:
        click.secho(f"warning: {FLAG}: the model code in these folders may run: {what}",
                    fg="yellow", err=True)
    else:
        click.echo(f"note: not running the model code these folders name ({what}); pass {FLAG} "
                   "if you trust it", err=True)


@contextlib.contextmanager
def refusing_code(folders: list[Path]):
    """transformers refuses a model that only its own code can build; say which flag allows it."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        what = describe(folders) or "model code"
        raise UsageError(f"{', '.join(map(str, folders))}: this model loads only with the code its "
                         f"folder ships ({what}), and peftkit never runs code named by a folder's "
                         f"own files. Read the code; if you trust it, pass {FLAG}") from None


def strip_code(folder: Path) -> list[str]:
    """Remove *.py files and auto_map entries from an output folder; returns what was removed."""
    removed = []
    for path in code_files(folder):
        path.unlink()
        removed.append(path.name)
    for name in CONFIG_FILES:
        path = Path(folder) / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.pop("auto_map", None) is not None:
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            removed.append(f"{name} auto_map")
    return removed
