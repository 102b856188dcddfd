"""Reading one data file (or one datasets `save_to_disk` folder) into a Dataset, by its format.

    .jsonl .json .csv .tsv  ─▶ pandas, after line-aware checks (checks.py) that name the line
    .parquet .arrow         ─▶ datasets' own readers (Dataset.from_parquet / from_file)
    save_to_disk folder     ─▶ datasets.load_from_disk
    anything else           ─▶ CoNLL (conll.py): eng.train, tweets_train.conll, dev.txt

Memory-mapped datasets are loaded into memory: the readers' later `map` calls would otherwise
write cache files into the user's data folder.
"""

from __future__ import annotations

from pathlib import Path

from peftkit.data.checks import check_table_shape, read_jsonl, utf8_problem
from peftkit.data.layout import is_disk_folder
from peftkit.errors import DataError

TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}
ARROW_FORMATS = (".parquet", ".arrow")


def read_file(path: Path):
    """One split: a Dataset with the file's own columns."""
    if is_disk_folder(path):
        return read_disk_split(path)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it needs at least one example")
    if suffix in ARROW_FORMATS:
        return read_arrow(path, suffix)
    if suffix not in TABLE_FORMATS:
        from datasets import Dataset

        from peftkit.data.conll import read_conll

        return Dataset.from_dict(read_conll(path))
    return read_text_table(path, suffix)


def read_text_table(path: Path, suffix: str):
    from datasets import Dataset

    kwargs = {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}
    if suffix in (".csv", ".tsv"):
        check_table_shape(path, kwargs.get("delimiter", ","), kwargs.get("quoting", 0))
    try:
        return Dataset.from_pandas(read_table(path, suffix, kwargs), preserve_index=False)
    except UnicodeDecodeError:
        raise DataError(utf8_problem(path)) from None
    except (ValueError, TypeError) as exc:  # pandas parse errors; pyarrow: a column mixing types
        raise DataError(f"{path}: cannot be read as {suffix[1:]}: {str(exc).splitlines()[0][:300]}") from None


def read_table(path: Path, suffix: str, kwargs: dict):
    import pandas as pd

    if suffix in (".json", ".jsonl"):
        return read_jsonl(path) if suffix == ".jsonl" else pd.read_json(path)
    return pd.read_csv(path, keep_default_na=False, encoding="utf-8-sig", **kwargs)


def read_arrow(path: Path, suffix: str):
    """Parquet through datasets; Arrow as datasets writes it (a stream), else an Arrow IPC file."""
    from datasets import Dataset

    try:
        if suffix == ".parquet":
            return Dataset.from_parquet(str(path), keep_in_memory=True)
        try:
            return Dataset.from_file(str(path), in_memory=True)
        except Exception:  # noqa: BLE001 - not a stream: try the IPC file format (pyarrow, feather)
            import pyarrow.feather as feather

            return Dataset(feather.read_table(str(path)))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow and datasets raise many types for a bad file
        raise DataError(f"{path}: cannot be read as {suffix[1:]} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else 'unreadable'}); is it "
                        f"a {suffix[1:]} file?") from None


def read_disk(path: Path):
    """A save_to_disk folder: a DatasetDict (splits) or a single Dataset, in memory."""
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path), keep_in_memory=True)
    except Exception as exc:  # noqa: BLE001 - a half-written or foreign folder
        raise DataError(f"{path}: looks like a datasets save_to_disk folder but cannot be loaded "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                        "write it again with Dataset.save_to_disk") from None


def read_disk_split(path: Path):
    """A save_to_disk folder standing for one split (data.train_file: folder/)."""
    loaded = read_disk(path)
    if not hasattr(loaded, "keys"):
        return loaded
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise DataError(f"{path}: a save_to_disk folder with the splits {', '.join(loaded)}; point "
                    "data.name at it (its splits are used by name) instead of a data.*_file key")
