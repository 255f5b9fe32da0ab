"""One training phase from the composed config: a fresh task, optimiser, callbacks and Lightning trainer."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from torch import nn

from brainbench.training.phases import Phase
from brainbench.training.task import SegmentationTask


def fit_phase(cfg: DictConfig, phase: Phase, net: nn.Module, loss: nn.Module, datamodule: pl.LightningDataModule,
              logger: MLFlowLogger, output_dir: Path, n_classes: int) -> None:
    """Fit ``net`` for one phase; a named phase logs its metrics under its name as prefix (same MLflow run)."""
    task = SegmentationTask(phase.prepare(net, datamodule), loss=loss,
                            optimizer=instantiate(cfg.model.optimizer),
                            scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
                            l1=cfg.model.l1, l2=cfg.model.l2, foreground_classes=range(1, n_classes))
    if phase.name:
        logger = MLFlowLogger(tracking_uri=cfg.logger.tracking_uri, run_id=logger.run_id, prefix=phase.name,
                              log_model=False)
    callbacks = [ModelCheckpoint(dirpath=output_dir / "checkpoints" / phase.name, save_last=True, save_top_k=0),
                 *(instantiate(callback) for callback in (cfg.model.get("callbacks") or {}).values())]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, default_root_dir=str(output_dir),
                                      callbacks=callbacks,
                                      **({"max_epochs": phase.max_epochs} if phase.max_epochs else {}))
    trainer.fit(task, datamodule=datamodule)
