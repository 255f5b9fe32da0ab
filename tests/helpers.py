"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


TINY_DEEPMEDIC = [
    "model.net.feature_maps=[4,4,4,4,4,4,6,6]",
    "model.net.fc_feature_maps=[8,8]",
    "sampler.segments_per_epoch=20",
    "sampler.val_segments=10",
    "sampler.batch_size=5",
    "trainer.max_epochs=2",
    "data.datamodule.val_fraction=0.25",
    "data.datamodule.test_fraction=0.25",
]
"""Overrides for a DeepMedic small enough to train in seconds on CPU (any data source)."""


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``brainbench ARGS`` as a user runs it: a fresh Python process in ``cwd``, output captured."""
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "brainbench.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)
