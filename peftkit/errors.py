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
