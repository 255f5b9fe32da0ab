"""Exception families. The CLI prints any of them as one line and exits with status 2.

Every message names the file (or config key), what was expected and what was found, so that a user
can fix the input without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class BrainbenchError(Exception):
    """Base class of every error the CLI reports as one line (exit status 2)."""


class BrainbenchDataError(BrainbenchError):
    """An input file or folder is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class BrainbenchConfigError(BrainbenchError):
    """A configuration value or command-line argument cannot be used."""
