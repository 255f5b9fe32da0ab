"""What a run shows while it works, and the log file it leaves behind.

Progress bars are for a person at a terminal: :func:`track` draws one on stderr only when stderr is a
terminal and brainbench is not quiet, so CI logs, pipes and notebooks get no cursor-control debris.
Quiet mode (:func:`set_quiet`, initially on when the environment sets ``BRAINBENCH_QUIET`` to 1, true or
yes) leaves warnings only. :func:`run_log` collects a run's log records and Python warnings — brainbench's
and Lightning's — in one file in the run's folder, whatever the console shows.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

QUIET_ENV = "BRAINBENCH_QUIET"
"""Environment variable turning quiet mode on (1, true or yes) for every process of a run, e.g. in CI."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""A line of the run log: time, level, logger, message."""

DETACHED_LOGGERS = ("pytorch_lightning", "lightning_fabric", "mlflow")
"""Loggers that may not propagate to the root logger, printing through their own handler: Lightning's when
imported before logging was configured, MLflow's always. The run log attaches to them directly then."""

_quiet = os.environ.get(QUIET_ENV, "").strip().lower() in {"1", "true", "yes"}


def quiet() -> bool:
    """Whether progress bars and per-epoch lines are off (warnings still show)."""
    return _quiet


def set_quiet(flag: bool) -> None:
    """Turn quiet mode on or off for this process."""
    global _quiet
    _quiet = bool(flag)


def track(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Every item of ``iterable``, with a progress bar on stderr (done / total, elapsed, remaining) when
    stderr is a terminal and not :func:`quiet`; otherwise plain iteration, printing nothing.

    ``total`` defaults to ``len(iterable)`` when it has one.
    """
    if quiet() or not sys.stderr.isatty():
        yield from iterable
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        yield from bar.track(iterable, total=total, description=description)


def quiet_consoles() -> None:
    """Raise the console handlers that logging already has — Hydra's (conf/hydra/job_logging) on the root
    logger, MLflow's own — to warnings, for quiet mode; file handlers (the run log) keep everything."""
    for handler in (*logging.getLogger().handlers, *logging.getLogger("mlflow").handlers):
        if type(handler) is logging.StreamHandler:
            handler.setLevel(logging.WARNING)


def report(message: str, logger: logging.Logger) -> None:
    """Log ``message`` at INFO (so the run log has it) and print it on stdout, unless quiet or logging already
    shows ``logger``'s INFO records on a console (Hydra's job logging under ``brainbench train``): once on screen."""
    logger.info(message)
    if not quiet() and not _shown_on_console(logger, logging.INFO):
        print(message, flush=True)


def _shown_on_console(logger: logging.Logger, level: int) -> bool:
    """Whether a ``level`` record of ``logger`` reaches a stream handler other than a file."""
    if not logger.isEnabledFor(level):
        return False
    current: logging.Logger | None = logger
    while current is not None:
        if any(isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
               and level >= handler.level for handler in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


@contextmanager
def run_log(path: str | Path) -> Iterator[Path]:
    """Append the block's log records (INFO and above, timestamped) and Python warnings to ``path``.

    A file handler joins the root logger (and Lightning's loggers when they do not propagate), the root
    level is lowered to INFO if needed, and warnings are routed through logging
    (:func:`logging.captureWarnings`). When the root logger had no handler, warnings also go on to stderr,
    as logging's last resort would have printed them. Everything is restored when the block ends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    console = None if root.handlers else logging.StreamHandler(sys.stderr)
    if console is not None:
        console.setLevel(logging.WARNING)
        root.addHandler(console)
    loggers = [root, *(logger for name in DETACHED_LOGGERS if not (logger := logging.getLogger(name)).propagate)]
    for logger in loggers:
        logger.addHandler(handler)
    level = root.level
    root.setLevel(min(level, logging.INFO))
    showwarning = warnings.showwarning
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        if warnings.showwarning is not showwarning:  # this block turned capturing on: turn it off again
            logging.captureWarnings(False)
        root.setLevel(level)
        for logger in loggers:
            logger.removeHandler(handler)
        if console is not None:
            root.removeHandler(console)
        handler.close()
