"""Which file holds which split of a local data set (issue 18: data as people have it).

    data.train_file / validation_file / test_file   ─▶ those files, whatever their names
    a datasets `save_to_disk` folder                 ─▶ its splits (load_from_disk)
    a folder                                         ─▶ standard names (train.txt, dev.tsv, ...),
                                                        else split words inside file names
                                                        (tweets_train.conll, annotated.dev.conll)
    a single file                                    ─▶ the training split

Each found file comes with the reason it was picked, so `peftkit inspect-data` can say which file
became which split. Torch-free; reads directory listings only.
"""

from __future__ import annotations

import re
from pathlib import Path

from peftkit.errors import DataError

SPLIT_FILES = {  # split -> file name stems tried in a data folder, in order
    "train": ["train", "trainset", "training"],
    "validation": ["validation", "valid", "dev", "devset", "val", "testa"],
    "test": ["test", "testset_w_refs", "testset", "testb"],
}
EXTENSIONS = [".txt", ".conll", ".iob", ".bio", ".jsonl", ".json", ".parquet", ".arrow", ".csv",
              ".tsv"]
# split words inside longer file names, any separator or none (wnut17train.conll, eng.testa):
# testa / testb are CoNLL-2003's development and test files; `val` only as a word (not "interval")
NAME_WORDS = {
    "train": re.compile(r"train"),
    "validation": re.compile(r"dev|valid|(?<![a-z])val(?![a-z])|testa"),
    "test": re.compile(r"test(?!a)"),
}
FILE_KEYS = {"train": "train_file", "eval": "validation_file", "test": "test_file"}  # role -> key


def kind_of_split(split: str) -> str | None:
    """train / validation / test for a split name and its synonyms (dev -> validation)."""
    for kind, stems in SPLIT_FILES.items():
        if split == kind or split in stems:
            return kind
    return None


def is_disk_folder(path: Path) -> bool:
    """A folder written by datasets' save_to_disk (a DatasetDict or a single Dataset)."""
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


def data_files(folder: Path) -> list[Path]:
    """Files (and save_to_disk folders) a folder's splits may be read from. A split word as the
    extension counts too: CoNLL-2003 ships eng.train, eng.testa, eng.testb."""
    stems = {s for names in SPLIT_FILES.values() for s in names}

    def readable(p: Path) -> bool:
        return p.suffix.lower() in EXTENSIONS or p.suffix.lower()[1:] in stems

    return sorted(p for p in folder.iterdir() if readable(p) and not p.name.startswith(".")
                  and (p.is_file() or is_disk_folder(p)))


def split_file(folder: Path, split: str) -> Path | None:
    """The file of `split` in a data folder (train.txt, dev.tsv, tweets_train.conll, ...)."""
    found = find_split_file(folder, split)
    return found[0] if found else None


def find_split_file(folder: Path, split: str) -> tuple[Path, str] | None:
    """(file, why it was picked): standard names first, then a split word inside a file name.
    Two files that both fit by name are an error: guessing would train on the wrong one."""
    for stem in SPLIT_FILES.get(split, [split]):
        for ext in EXTENSIONS:
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}", "standard name"
    kind = kind_of_split(split)
    if kind is None:
        return None
    fits = [p for p in data_files(folder) if name_kinds(p.name) == {kind}]
    if len(fits) > 1:
        raise DataError(f"{folder}: {len(fits)} files could be the {split} split "
                        f"({', '.join(p.name for p in fits)}); name the one to use with "
                        f"data.{FILE_KEYS[role_of_kind(kind)]}")
    if fits:
        return fits[0], f"file name contains {NAME_WORDS[kind].search(fits[0].name.lower())[0]!r}"
    return None


def name_kinds(name: str) -> set[str]:
    """The split kinds whose words occur in a file name (train_dev.conll fits two: ambiguous)."""
    stem = name.lower()
    if Path(stem).suffix in EXTENSIONS:  # "annotated.dev.conll": the split word is in the stem
        stem = stem[:-len(Path(stem).suffix)]
    return {kind for kind, words in NAME_WORDS.items() if words.search(stem)}


def role_of_kind(kind: str) -> str:
    return {"train": "train", "validation": "eval", "test": "test"}[kind]
