"""Output folders of merge and export: checked before any work, written whole or not at all.

`peftkit.json` beside the weights says what the folder is, so that `peftkit predict` and
`peftkit eval` can use it without the run folder it came from:

    {"format": "peftkit", "kind": "merged" | "adapter" | "onnx", "task": ..., "labels": [...],
     "strategy": ..., "recipe": {...the run's resolved recipe...}, "sources": [...], ...}
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from peftkit.errors import PeftkitError, UsageError, write_error

META = "peftkit.json"
MERGED, ADAPTER = "merged", "adapter"  # the kinds of folder (peftkit.json "kind")
ONNX = "onnx"                          # a merged model as an ONNX graph (export/onnx_export.py)


def check_out(out: Path, overwrite: bool, sources: list[Path]) -> Path:
    """Refuse a non-empty --out without --overwrite, and never let --out swallow a source run."""
    out = Path(os.path.expanduser(out)).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    for src in sources:
        src = Path(src).resolve()
        if out == src or out in src.parents:
            raise UsageError(f"--out {out} would replace the run folder {src}; choose another folder")
    found = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if found and not overwrite:
        raise UsageError(f"--out {out} is not empty; pass --overwrite to replace it or choose "
                         "another folder")
    if found and not (out / META).is_file():  # --overwrite deletes only what peftkit wrote
        listed = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise UsageError(f"--out {out} is not empty ({listed}) and is not a folder peftkit merge "
                         f"or export wrote (no {META}); peftkit never deletes it, not even with "
                         "--overwrite. Choose another folder")
    return out


def label_config(model, labels) -> None:
    """id2label / label2id in the saved config: load_model set them; say them again in case a
    strategy dropped them."""
    if labels is not None:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}


def without_code(folder: Path, trust_remote_code: bool) -> None:
    """An output folder carries model code (*.py, auto_map) only when --trust-remote-code said
    so: whoever loads it with trust_remote_code=True later would run it (issue 17)."""
    if trust_remote_code:
        return
    from peftkit.remote_code import strip_code

    removed = strip_code(folder)
    if removed:
        print(f"note: left out the model code ({', '.join(removed[:6])}); pass "
              "--trust-remote-code to keep it")


@contextlib.contextmanager
def staged(out: Path):
    """Yield a temporary sibling of `out`; on success it replaces `out` in two renames.

    A crash leaves either the old folder or the new one under `out` (plus a hidden leftover),
    never a half-written model.
    """
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    clear_leftovers(out)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise write_error(tmp, exc) from None
    try:
        yield tmp
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_out_file(out: Path, suffix: str, overwrite: bool) -> Path:
    """One-file outputs (`--format gguf`): --out names the file; an existing one is replaced
    only with --overwrite and only when it is of the kind we write (its first bytes say so)."""
    out = Path(os.path.expanduser(out)).resolve()
    if out.suffix != suffix:
        raise UsageError(f"--out {out}: a {suffix} file is written here; give a name ending in "
                         f"{suffix}, e.g. --out model{suffix}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name ending in {suffix}")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it or choose another name")
    if out.exists() and out.open("rb").read(4) != suffix.lstrip(".").upper().encode():
        raise UsageError(f"--out {out} exists and is not a {suffix} file; peftkit never deletes "
                         "it, not even with --overwrite. Choose another name")
    return out


@contextlib.contextmanager
def staged_file(out: Path):
    """Yield a temporary sibling path of the file `out`; on success it replaces `out` at once
    (a crash leaves the old file or the new one, never half of one)."""
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out.parent, exc) from None
    clear_leftovers(out)
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as exc:
        raise write_error(out, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")


def clear_leftovers(out: Path) -> None:
    """What a killed merge/export left beside `out` (issue 17: an 87 MB hidden .partial-* stayed
    forever): a partial folder is removed; a previous result set aside just before the kill
    (`.old-*` with `out` missing) is put back. Folders of a process still running are left."""
    if not out.parent.is_dir():
        return
    for path in sorted(out.parent.iterdir()):
        m = LEFTOVER.match(path.name)
        if not m or m["name"] != out.name or alive(int(m["pid"])):
            continue
        if m["kind"] == "partial" and path.is_file():  # a one-file output (staged_file)
            path.unlink(missing_ok=True)
            print(f"note: removed {path}, left by an interrupted merge or export (pid {m['pid']})")
            continue
        if not path.is_dir():
            continue
        if m["kind"] == "old" and not out.exists():
            os.replace(path, out)
            print(f"note: put back {out} (an interrupted run had set it aside as {path.name})")
            continue
        shutil.rmtree(path, ignore_errors=True)
        print(f"note: removed {path}, left by an interrupted merge or export (pid {m['pid']})")


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier call that failed: stale too
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def publish(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except OSError as exc:
        raise PeftkitError(f"cannot move the result into {out}: {exc.strerror}") from None
    shutil.rmtree(old, ignore_errors=True)


def write_meta(folder: Path, meta: dict) -> None:
    (folder / META).write_text(json.dumps({"format": "peftkit", **meta}, indent=2) + "\n",
                               encoding="utf-8")


def read_meta(folder: Path) -> dict | None:
    path = Path(folder) / META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable ({exc}); re-run peftkit merge / export") from None
