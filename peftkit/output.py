"""What a command prints, at three levels (`peftkit -q|-v COMMAND`):

    quiet    the result and errors (warnings about the run itself, e.g. a collapse, included)
    normal   + peftkit's own lines and one progress bar for training, one for evaluation
    verbose  + what the libraries say: transformers' load reports, Python warnings, the Trainer's
             raw log dicts, datasets' progress bars

Below verbose the libraries' messages go to the run folder's run.log (rundir.LOG) instead of the
screen; commands without a run folder drop them. The level travels to `--nproc` workers in the
environment (PEFTKIT_OUTPUT). Torch-free at import time.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LEVELS = ("quiet", "normal", "verbose")
ENV = "PEFTKIT_OUTPUT"
LIBRARIES = ("transformers", "peft", "datasets", "accelerate", "torch", "py.warnings")


def set_level(level: str) -> None:
    os.environ[ENV] = level


def level() -> str:
    value = os.environ.get(ENV, "normal")
    return value if value in LEVELS else "normal"


def quiet() -> bool:
    return level() == "quiet"


def verbose() -> bool:
    return level() == "verbose"


def say(*args, **kwargs) -> None:
    """print(), unless -q."""
    if not quiet():
        print(*args, **kwargs)


def warn(message: str) -> None:
    """A warning about the run itself: on stderr, shown at every level."""
    print(f"warning: {message}", file=sys.stderr)


def route_libraries(log_file: Path | None = None) -> None:
    """Write the libraries' logging and Python warnings to `log_file`; below -v nowhere else.
    Imports transformers and datasets: called where a command is about to use them anyway."""
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger
    handler: logging.Handler = logging.NullHandler()
    if log_file is not None:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    handler.peftkit = True
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "peftkit", False)]:
            logger.removeHandler(old)  # a second run in one process (bench, tests)
            old.close()
        logger.addHandler(handler)
        if not verbose():
            logger.propagate = False  # no root logger, no logging.lastResort on the screen
    if not verbose():
        quiet_transformers_console()
        quiet_progress_bars()


def quiet_transformers_console() -> None:
    """transformers logs through its own stderr handler: keep only its errors on the screen."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.set_verbosity_warning()  # the warnings still reach run.log through our handler
    hf_logging.disable_progress_bar()   # "Loading weights", "Writing model shards": instant here


def quiet_progress_bars() -> None:
    """datasets' bars (tokenizing: fast, and many) go; the Trainer's bars are the ones shown."""
    import datasets

    datasets.disable_progress_bars()
