"""User-facing errors: one line that says what is wrong and what is allowed.

Anything raised as a :class:`ScalelabError` is the user's to fix; the CLI prints its message
without a traceback and exits with code 2. Everything else is a bug or a crash.
"""

from __future__ import annotations


class ScalelabError(Exception):
    """A problem with the user's input (study file, command-line option, data on disk)."""

    exit_code = 2


class StudyError(ScalelabError):
    """A study file that cannot be used, located by file and field path."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field, self.message = source, field, message
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {message}")
