"""Errors the course reports as one sentence plus the command that fixes it."""

from __future__ import annotations


class CourseError(Exception):
    """A problem the learner can fix; the message says what happened and what to run.

    In a notebook it renders as its message only (no traceback); the CLI prints
    it and exits with status 1.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(self.text)

    @property
    def text(self) -> str:
        return self.message if not self.fix else f"{self.message}\nFix: {self.fix}"

    def _render_traceback_(self) -> list[str]:  # IPython hook: show the message, not a traceback
        return [f"{type(self).__name__}: {line}" if i == 0 else line
                for i, line in enumerate(self.text.splitlines())]


class ServerError(CourseError):
    """The bundled server could not be set up, started or reached."""


class DatabaseUnavailable(CourseError):
    """DATABASE_URL is missing, or the server behind it does not accept it."""
