"""Weight files as peftkit writes and reads them: readable like every other file, and checked.

    seal(folder, manifest)    chmod 0644 (umask applied) + `manifest`, a SHA-256 line per weight
                              file in `sha256sum` format (`sha256sum -c SHA256SUMS` checks it too)
    verify(folder, manifest)  refuse a weight file that is missing, truncated or changed

safetensors writes its files 0600; every other file of a run folder is 0644, and a folder shared
with a group (or copied with the permissions kept) should not hide its weights. A weight file
changed on disk (a copy cut short, a flipped bit) would otherwise load as garbage predictions or
fail deep in a loader with a traceback. Torch-free.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from peftkit.errors import UsageError, write_error

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")   # what transformers loads
# sealed too: an ONNX graph holds its weights (model.onnx), or past 2 GiB they lie beside it
GRAPH_SUFFIXES = (".onnx", ".onnx.data")
SEALED_SUFFIXES = WEIGHT_SUFFIXES + GRAPH_SUFFIXES


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*")
                  if p.is_file() and p.name.endswith(SEALED_SUFFIXES))


def graph_only(folder: Path) -> bool:
    """An ONNX graph and no weights transformers loads (`peftkit merge --format onnx`)."""
    names = [p.name for p in Path(folder).iterdir() if p.is_file()] if Path(folder).is_dir() else []
    return (any(n.endswith(GRAPH_SUFFIXES) for n in names)
            and not any(n.endswith(WEIGHT_SUFFIXES) for n in names))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def seal(folder: Path, manifest: str) -> None:
    folder, mode = Path(folder), file_mode()
    lines = []
    try:
        for path in weight_files(folder):
            os.chmod(path, mode)
            lines.append(f"{sha256(path)}  {path.relative_to(folder).as_posix()}\n")
        (folder / manifest).write_text("".join(lines), encoding="utf-8")
    except OSError as exc:
        raise write_error(folder / manifest, exc) from None


def verify(folder: Path, manifest: str) -> bool:
    """True when checked; False for a folder written before manifests existed (nothing to check)."""
    folder = Path(folder)
    listing = folder / manifest
    if not listing.is_file():
        return False
    for n, line in enumerate(listing.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        want, _, name = line.partition("  ")
        rel = PurePosixPath(name)
        if len(want) != 64 or not name or rel.is_absolute() or ".." in rel.parts:
            raise UsageError(f"{listing}, line {n}: not a SHA-256 line ('<hash>  <file>'); the "
                             "manifest is damaged: restore the folder or write it again")
        path = folder / rel
        if not path.is_file():
            raise UsageError(f"{path}: weight file missing (listed in {listing}); restore it or "
                             "write the folder again")
        if sha256(path) != want:
            raise UsageError(f"{path}: corrupt weight file (its SHA-256 differs from {listing}: "
                             "truncated or changed since peftkit wrote it); restore it or write "
                             "the folder again")
    return True
