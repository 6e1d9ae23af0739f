"""User-facing errors.

A `VitedgeError` is a problem with the user's input or environment that the user can fix.
The CLI prints it as one line (message, then the hint) and exits 1 without a traceback.
Anything else that escapes is a bug in vitedge and keeps its traceback.
"""

from __future__ import annotations


def exception_line(exc: BaseException, limit: int = 160) -> str:
    """A third-party exception in one line for a user-facing message: "ValueError: first line"
    (at most `limit` characters of it), or the type alone when it says nothing."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text.strip() else type(exc).__name__


class VitedgeError(Exception):
    """An error the user can act on: what was wrong, what was expected, what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(VitedgeError):
    """A path, option or data set given by the user is missing, malformed or unsupported."""


class ModelLoadError(VitedgeError):
    """A model source could not be turned into a runnable model."""


class ExportError(VitedgeError):
    """Export to ONNX failed or produced a graph that does not match the source model."""


class MissingDependencyError(VitedgeError):
    """An optional dependency needed for this source or step is not installed."""
