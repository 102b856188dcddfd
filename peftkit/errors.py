"""User-facing errors. The CLI prints these without a traceback.

`RecipeError` (and anything else the user fixes by editing a recipe or an argument) exits
with code 2, like click's own usage errors; other `PeftkitError`s exit with 1.
"""

from __future__ import annotations


class PeftkitError(Exception):
    """An error whose message alone tells the user what went wrong and how to fix it."""

    exit_code = 1


class RecipeError(PeftkitError):
    """One or more problems with a recipe; all are reported at once."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        noun = "problem" if len(self.problems) == 1 else "problems"
        lines = [f"{head}{len(self.problems)} {noun} in the recipe:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class UsageError(PeftkitError):
    """Bad input that is not a recipe: a missing model, data folder or run folder."""

    exit_code = 2


class DataError(PeftkitError):
    """The data set cannot be read or does not fit the task; names the file, line or column."""

    exit_code = 2


# A full disk (and its cousins) gets one documented line wherever peftkit writes (issue 17: a
# traceback from the tokenizers library when a checkpoint filled the disk).
DISK_ERRNOS = {28: "no space left on the device", 122: "disk quota exceeded",   # ENOSPC, EDQUOT
               13: "permission denied", 1: "operation not permitted",           # EACCES, EPERM
               30: "read-only file system"}                                     # EROFS


def write_error(path, exc: OSError) -> PeftkitError:
    """`cannot write <path>: no space left on the device. Free some space ...` for the disk
    errnos; the system's own words for anything else."""
    where = exc.filename or path
    if exc.errno in DISK_ERRNOS:
        return PeftkitError(f"cannot write {where}: {DISK_ERRNOS[exc.errno]}. Free some space or "
                            "point output.dir (or --out) at a writable folder")
    return PeftkitError(f"cannot write {where}: {exc.strerror or exc}")
