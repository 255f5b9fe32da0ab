"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``brainbench ARGS`` as a user runs it: a fresh Python process in ``cwd``, output captured."""
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "brainbench.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)
