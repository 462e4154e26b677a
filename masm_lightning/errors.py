"""The exceptions that mean "the user gave something unusable", as opposed to a bug of ours.

A :class:`UserError` is raised where a value is checked — a path, a file's content, a config value, a checkpoint —
with a message that names the bad value and what would be valid. The command line catches it once
(:func:`masm_lightning.cli.main`) and prints ``error: <message>`` with exit status 2, without a traceback; any
other exception is a bug and keeps its traceback. ``MASM_DEBUG=1`` shows the traceback of user errors too (for
developers: where the value was checked, and the third-party error it came from).

The concrete types also subclass the builtin a Python caller would expect (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` around the library keeps working.

Standard library only: every layer of the package may import it (the torch-only ``adapters`` library raises plain
``ValueError``; the detector turns those into :class:`InvalidInputError` where it applies them to a backbone).
"""

from __future__ import annotations

import os

__all__ = [
    "DEBUG_ENV",
    "IncompatibleCheckpointError",
    "InputNotFoundError",
    "InvalidInputError",
    "UserError",
    "debug_enabled",
    "first_line",
]

DEBUG_ENV = "MASM_DEBUG"


class UserError(Exception):
    """A mistake in what the user gave; the message is one line naming the bad value and what is valid."""


class InvalidInputError(UserError, ValueError):
    """A value, or a file's content, that cannot be used (file parse errors name the file and line)."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A path the user gave (or a file a dataset layout needs) that does not exist."""


class IncompatibleCheckpointError(UserError, RuntimeError):
    """A checkpoint whose weights do not fit the model it is loaded into (another backbone or adapter layout); a
    ``RuntimeError`` like ``nn.Module.load_state_dict``'s own."""


def debug_enabled() -> bool:
    """Whether ``MASM_DEBUG`` asks for tracebacks of user errors (any value but empty, ``0``, ``false``, ``no``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def first_line(error: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (a library's multi-line message, quoted inside one of ours), or its
    type's name when it has none; ``with_type`` prefixes the type's name (``OSError: …``)."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0].strip()}" if with_type else lines[0].strip()
