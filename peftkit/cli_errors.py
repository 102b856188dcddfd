"""How every `peftkit` command ends on an error: one screen of text and an exit code, no traceback.

Its own module so that cli.py and the commands in peftkit/commands/ both import it, and neither
imports the other's module.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading

import click

from peftkit.errors import PeftkitError


def friendly_errors(fn):
    """Print peftkit's own errors as one screen of text and exit non-zero, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        sigterm_as_ctrl_c()
        try:
            return fn(*args, **kwargs)
        except PeftkitError as exc:
            if not getattr(exc, "relayed", False):  # else the main process has printed it
                click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # peftkit.callbacks.RunInterrupted says where it stopped
            click.secho(f"interrupted: {exc}" if str(exc) else
                        "interrupted: finished files are intact; rerun with --resume to continue",
                        fg="yellow", err=True)
            sys.exit(getattr(exc, "exit_code", 130))

    return wrapper


def sigterm_as_ctrl_c() -> None:
    """SIGTERM (`kill`, a job scheduler) stops peftkit like Ctrl-C: clean exit, same message.
    During training peftkit.callbacks.SignalStop takes both over to checkpoint first."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
