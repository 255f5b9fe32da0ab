"""One training phase from the composed config: a fresh task, optimiser, callbacks and Lightning trainer.

A phase checkpoints every epoch (``checkpoints/<phase>/last.ckpt``) and ends by writing the net's final
weights (``final.pt``, after any best-epoch restore), so that a killed run resumes where it stopped:
finished phases are skipped (their final weights reloaded), the interrupted one continues from its
last epoch checkpoint. Each batch
reseeds the global generators from (seed, phase, epoch, batch) so that dropout draws the same masks in
a resumed fit as in an uninterrupted one (the segments already depend only on seed, epoch and index).
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.loggers import MLFlowLogger
from torch import nn

from brainbench.progress import quiet, report
from brainbench.training.phases import Phase
from brainbench.training.task import SegmentationTask

FINAL_WEIGHTS = "final.pt"
"""A phase's net weights when it ended: its mark of completion."""

LIGHTNING_NOTICES = ("💡 Tip:", "GPU available:", "TPU available:")
"""Starts of the INFO records Lightning logs at every ``Trainer()`` that no flag turns off: advertisements for
its cloud services (shown whenever the logger is not Lightning's own) and the accelerators present, which
the run's config already states. A warning such as "GPU available but not used" still shows."""

LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
"""The loggers Lightning's ``rank_zero_info`` writes through (the last of its packages imported sets it)."""

log = logging.getLogger(__name__)


class RunLogger(MLFlowLogger):
    """An MLflow logger that leaves its run open when a fit ends.

    A brainbench run spans several fits (phases), prediction and evaluation; Lightning's logger would
    mark it FINISHED after the first fit, so a run killed in a later phase would look done. The
    pipeline closes the run itself, after evaluation.
    """

    def finalize(self, status: str = "success") -> None:
        """Nothing to flush: metrics are written synchronously."""


class BatchSeed(pl.Callback):
    """Reseed torch, NumPy and ``random`` before each training batch from (seed, phase, epoch, batch).

    Dropout then draws the same masks whatever else consumed random numbers since the fit started: a
    fit restored from a checkpoint creates its data iterators (which draw a seed) at other moments
    than an uninterrupted one.
    """

    def __init__(self, seed: int, phase: str):
        self.seed, self.phase = seed, zlib.crc32(phase.encode())

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        state = np.random.SeedSequence([self.seed, self.phase, trainer.current_epoch, batch_idx]).generate_state(1)[0]
        torch.manual_seed(int(state))
        np.random.seed(int(state))
        random.seed(int(state))


class EpochCheckpoint(pl.Callback):
    """Keep one checkpoint, ``path``, of the last finished epoch: written when the next epoch starts and
    when the fit ends, through a temporary file and a rename (a kill mid-write leaves the previous one).

    Lightning's ``ModelCheckpoint`` saves during ``on_train_epoch_end``, before the epoch's learning-rate
    scheduler step, and a fit restored from there skips that step. When the next epoch starts, the epoch
    is complete, scheduler included; Lightning has only announced the new epoch (its ``ready`` count),
    which the saved loop state leaves out, so that the checkpoint restores as the state between epochs.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._between_epochs = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._between_epochs:
            progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
            for counts in (progress["total"], progress["current"]):
                counts["ready"] -= 1

    def _save(self, trainer: pl.Trainer) -> None:
        partial = self.path.with_name(f".{self.path.name}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(partial, weights_only=False)  # the full state: optimiser and loops resume from it
        if trainer.is_global_zero:
            os.replace(partial, self.path)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._between_epochs = True
            try:
                self._save(trainer)
            finally:
                self._between_epochs = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)


class EpochLines(pl.Callback):
    """One line per epoch — ``Epoch k/n: <the epoch's logged metrics> (<seconds> s)`` — where a progress bar
    would show nothing readable (stdout not a terminal: a pipe, CI, a notebook's subprocess); also logged,
    so that the run log has it."""

    def __init__(self, phase: str = ""):
        self.prefix = f"{phase}: " if phase else ""
        self._started = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = ", ".join(f"{name} {float(value):.4g}" for name, value in sorted(trainer.callback_metrics.items()))
        report(f"{self.prefix}Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {metrics} "
               f"({time.perf_counter() - self._started:.1f} s)", log)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar without ``v_num`` (the logger's version: here an MLflow run id prefix)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class UpstreamWarnings(pl.Callback):
    """Ignore, in every training process (spawned DDP workers too), a warning brainbench has no part in:
    recent torch (2.13 here) deprecates constructing ``torch.utils._pytree.LeafSpec``, which Lightning 2.6's
    own ``pytorch_lightning/utilities/_pytree.py`` still does during a fit (FutureWarning "`isinstance(treespec,
    LeafSpec)` is deprecated"). Drop this once Lightning stops calling it. The filter matches that message
    only; :func:`fit_phase` scopes it to the fit in the launching process."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)


class _DropNotices(logging.Filter):
    """Drops the records starting with one of :data:`LIGHTNING_NOTICES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LIGHTNING_NOTICES)


@contextmanager
def _quiet_upstream() -> Iterator[None]:
    """Within the block: no :data:`LIGHTNING_NOTICES`, and the warning filters as they were before it ends."""
    notices, loggers = _DropNotices(), [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]
    for logger in loggers:
        logger.addFilter(notices)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(notices)


def progress_callbacks(cfg: DictConfig, phase: Phase) -> tuple[list[pl.Callback], bool]:
    """How the fit shows progress, and whether Lightning's progress bar is on: the rich bar on a terminal
    (unless ``trainer.enable_progress_bar`` is false or quiet), one line per epoch otherwise — on screen
    unless quiet, and in the run's log file either way."""
    if cfg.trainer.get("enable_progress_bar", True) and sys.stdout.isatty() and not quiet():
        return [ProgressBar()], True
    return [EpochLines(phase.name)], False


def logging_interval(trainer: pl.Trainer, datamodule: pl.LightningDataModule) -> int:
    """The trainer's ``log_every_n_steps``, at most the batches each process trains per epoch, so that a short
    schedule is not told its epoch is smaller than the logging interval (metrics are logged per epoch)."""
    loader = datamodule.train_dataloader()
    per_process = math.ceil(len(loader.dataset) / trainer.world_size)
    return max(1, min(trainer.log_every_n_steps, math.ceil(per_process / loader.batch_size)))


def phase_dir(output_dir: Path, phase: Phase) -> Path:
    """Where a phase's checkpoints and final weights live."""
    return output_dir / "checkpoints" / phase.name


def fit_phases(cfg: DictConfig, phases: list[Phase], net: nn.Module, loss: nn.Module,
               datamodule: pl.LightningDataModule, logger: MLFlowLogger, output_dir: Path, n_classes: int) -> None:
    """Fit every phase in turn, skipping those a previous attempt of this run finished."""
    finished = None
    for phase in phases:
        final = phase_dir(output_dir, phase) / FINAL_WEIGHTS
        if final.is_file():
            finished = final
            continue
        if finished is not None:  # the phase before was finished by an earlier attempt: start from its weights
            net.load_state_dict(torch.load(finished, map_location="cpu", weights_only=True))
            finished = None
        fit_phase(cfg, phase, net, loss, datamodule, logger, output_dir, n_classes)
        partial = final.with_name(f".{final.name}.partial")
        torch.save(net.state_dict(), partial)
        os.replace(partial, final)
    if finished is not None:
        net.load_state_dict(torch.load(finished, map_location="cpu", weights_only=True))


def fit_phase(cfg: DictConfig, phase: Phase, net: nn.Module, loss: nn.Module, datamodule: pl.LightningDataModule,
              logger: MLFlowLogger, output_dir: Path, n_classes: int) -> None:
    """Fit ``net`` for one phase, from the phase's last checkpoint when there is one; a named phase logs
    its metrics under its name as prefix (same MLflow run)."""
    task = SegmentationTask(phase.prepare(net, datamodule), loss=loss,
                            optimizer=instantiate(cfg.model.optimizer),
                            scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
                            l1=cfg.model.l1, l2=cfg.model.l2, foreground_classes=range(1, n_classes))
    if phase.name:
        logger = RunLogger(tracking_uri=cfg.logger.tracking_uri, run_id=logger.run_id, prefix=phase.name,
                           log_model=False)
    folder = phase_dir(output_dir, phase)
    shown, progress_bar = progress_callbacks(cfg, phase)
    callbacks = [EpochCheckpoint(folder / "last.ckpt"), BatchSeed(cfg.seed, phase.name), UpstreamWarnings(), *shown,
                 *(instantiate(callback) for callback in (cfg.model.get("callbacks") or {}).values())]
    with _quiet_upstream():
        trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, default_root_dir=str(output_dir),
                                          callbacks=callbacks, enable_progress_bar=progress_bar,
                                          **({"max_epochs": phase.max_epochs} if phase.max_epochs else {}))
        trainer.log_every_n_steps = logging_interval(trainer, datamodule)
        last = folder / "last.ckpt"
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
