"""User-facing errors: one clear line, a non-zero exit, never a bare traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the user's input (config, data, paths). Printed as one line, exit code 2."""

    exit_code = 2


class DataError(UserError):
    """Bad dataset content. The message names the file and the entry."""


class ConfigError(UserError):
    """Bad configuration value."""


class OfflineError(UserError):
    """A hub / network resource was asked for and cannot be reached."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first non-blank line of an exception's message (libraries' messages run over several lines), cut to
    ``limit`` characters; the exception's class name when it has no message."""
    lines = str(e).strip().splitlines()
    return lines[0].strip()[:limit] if lines else e.__class__.__name__


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a UserError raised by a CLI entry point into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            # one line even when a path or a value holds a newline
            print("error: " + str(e).replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
            sys.exit(e.exit_code)

    return wrapper
