"""Errors that the CLI turns into a one-line message and exit code 2.

Every problem with what the user gave us (a file, a shape, an option) is a
``UserError``. Its ``str`` is the whole message: it names the file (when there
is one) and the problem. Anything else that escapes is a bug in lstm_doctor.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ModelError(UserError):
    """The weights do not describe a valid LSTM (shapes, dtypes, names)."""


class InputError(UserError):
    """The inputs cannot be fed to the model (file, shape, layout)."""


class ConfigError(UserError):
    """An option, spec or threshold is invalid."""
