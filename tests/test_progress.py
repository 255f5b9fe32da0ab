"""Progress and logs: bars only on a terminal, quiet mode, the run log, and a training's console output
as a user piping it sees it (one line per epoch, none of Lightning's or torch's noise)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from brainbench.progress import quiet, report, run_log, set_quiet, track
from brainbench.training.fit import EpochLines, ProgressBar, progress_callbacks
from brainbench.training.phases import Phase
from tests.helpers import TINY, run_cli

EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+): (.*) \(\d+\.\d s\)$")
NOISE = ("Tip", "litlogger", "litmodels", "LeafSpec", "smaller than the logging interval", "GPU available:",
         "TPU available:", "`weights_only` was not set")
"""What Lightning and torch printed in the demo before: advertising, a deprecation inside Lightning, a
logging interval longer than the tiny schedule's epoch, the accelerators present, a checkpoint default."""
BAR = ("\x1b[?25l", "it/s", "ETA")
"""Marks of a live progress bar: the hidden cursor, Lightning's rate, brainbench's remaining time."""


@pytest.fixture
def loud():
    """Quiet mode off for the test (whatever the environment says), restored after."""
    before = quiet()
    set_quiet(False)
    yield
    set_quiet(before)


@contextmanager
def terminal_stderr() -> Iterator[Callable[[], str]]:
    """``sys.stderr`` on a pseudo-terminal; yields a function reading what was written to it. (A context in
    the test body: pytest's output capture resets ``sys.stderr`` after fixtures ran.)"""
    master, slave = os.openpty()
    os.set_blocking(master, False)
    before = sys.stderr
    with open(slave, "w", encoding="utf-8") as stream:
        sys.stderr = stream

        def written() -> str:
            stream.flush()
            chunks = []
            while True:
                try:
                    chunks.append(os.read(master, 65536))
                except BlockingIOError:
                    return b"".join(chunks).decode("utf-8", "replace")

        try:
            yield written
        finally:
            sys.stderr = before
            os.close(master)


def test_track_off_a_terminal_yields_every_item_and_prints_nothing(loud, capfd):
    assert list(track(range(5), "Counting")) == [0, 1, 2, 3, 4]
    assert list(track((x * x for x in range(4)), "Squaring")) == [0, 1, 4, 9]  # no len(): total unknown
    assert list(track([], "Nothing")) == []
    assert capfd.readouterr() == ("", "")


def test_track_draws_a_bar_on_a_terminal_unless_quiet(loud):
    with terminal_stderr() as written:
        assert list(track(["a", "b", "c"], "Counting")) == ["a", "b", "c"]
        drawn = written()
        assert "Counting" in drawn and "3/3" in drawn
        set_quiet(True)
        assert list(track(["a", "b", "c"], "Counting")) == ["a", "b", "c"]
        assert written() == ""


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("0", False),
                                             ("no", False), ("", False)])
def test_quiet_starts_from_the_environment(value, expected):
    code = "from brainbench.progress import quiet; print(quiet())"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "BRAINBENCH_QUIET": value},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(expected)


def test_run_log_collects_records_and_warnings_then_leaves_logging_as_it_was(tmp_path):
    root = logging.getLogger()
    handlers, level, showwarning = list(root.handlers), root.level, warnings.showwarning
    path = tmp_path / "run" / "run.log"
    with run_log(path) as written:
        logging.getLogger("brainbench.test").info("a brainbench record")
        logging.getLogger("pytorch_lightning.test").info("a Lightning record")
        logging.getLogger("brainbench.test").debug("below INFO")
        warnings.warn("a Python warning", UserWarning, stacklevel=1)
    assert written == path
    text = path.read_text()
    lines = text.splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO brainbench\.test: a brainbench record$", lines[0])
    assert "INFO pytorch_lightning.test: a Lightning record" in text
    assert "UserWarning: a Python warning" in text and "WARNING py.warnings" in text
    assert "below INFO" not in text
    assert list(root.handlers) == handlers and root.level == level and warnings.showwarning is showwarning
    logging.getLogger("brainbench.test").warning("after the block")
    assert "after the block" not in path.read_text()


@pytest.fixture(scope="module")
def tiny_training(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``brainbench train`` on the tiny config with stdout piped and Python's default warning filters (no
    PYTHONWARNINGS=ignore: what a user sees), not quiet; its result and working folder."""
    workdir = tmp_path_factory.mktemp("progress")
    result = run_cli("train", *TINY, f"logger.tracking_uri=sqlite:///{workdir / 'mlflow.db'}", cwd=workdir,
                     env={"PYTHONWARNINGS": "", "BRAINBENCH_QUIET": "0"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, workdir


def test_training_prints_one_line_per_epoch(tiny_training):
    result, _ = tiny_training
    epochs = [EPOCH_LINE.match(line) for line in result.stdout.splitlines() if EPOCH_LINE.match(line)]
    assert [(m[1], m[2]) for m in epochs] == [("1", "2"), ("2", "2")]
    for match in epochs:
        names = [item.split(" ")[0] for item in match[3].split(", ")]
        assert {"train_loss", "val_cross_entropy"} <= set(names)
    assert not any(bar in result.stdout + result.stderr for bar in BAR)  # no progress bar off a terminal


def test_training_output_has_no_upstream_noise(tiny_training):
    result, workdir = tiny_training
    output = result.stdout + result.stderr
    assert [noise for noise in NOISE if noise in output] == []
    assert not list(workdir.rglob("epoch=*.ckpt"))  # no second checkpoint by Lightning's default ModelCheckpoint


def test_epoch_lines_land_in_the_run_log(tiny_training):
    _, workdir = tiny_training
    (log,) = list((workdir / "runs").rglob("run.log"))
    epochs = [line for line in log.read_text().splitlines() if "brainbench.training.fit: Epoch " in line]
    assert len(epochs) == 2


def test_quiet_training_prints_no_epoch_line_but_logs_it(loud, capsys, caplog, monkeypatch):
    """What :func:`fit_phase` adds to the trainer (the CLI run above shows what EpochLines prints): the bar on a
    terminal unless quiet; quiet, the epoch lines still reach the log (the run's log file) but not the screen."""
    cfg = OmegaConf.create({"trainer": {"enable_progress_bar": True}})
    shown, bar = progress_callbacks(cfg, Phase())
    assert [type(callback) for callback in shown] == [EpochLines] and not bar  # stdout is captured: no terminal
    with monkeypatch.context() as terminal:
        terminal.setattr(sys.stdout, "isatty", lambda: True)  # what progress_callbacks asks of stdout
        shown, bar = progress_callbacks(cfg, Phase())
        assert [type(callback) for callback in shown] == [ProgressBar] and bar
        set_quiet(True)
        shown, bar = progress_callbacks(cfg, Phase())
        assert [type(callback) for callback in shown] == [EpochLines] and not bar
    with caplog.at_level(logging.INFO, logger="brainbench.training.fit"):
        report("Epoch 1/1: loss 0.5", logging.getLogger("brainbench.training.fit"))
    assert capsys.readouterr().out == "" and "Epoch 1/1: loss 0.5" in caplog.text
