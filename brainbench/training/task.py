"""LightningModule for patch/segment-trained segmentation networks (DeepMedic, 2D patch CNNs).

Loss: the configured segmentation loss (``loss=...``, :mod:`brainbench.training.losses`; the papers'
default is voxel-wise cross-entropy over every predicted voxel of a segment) plus explicit L1/L2
penalties on the trainable conv/FC weights (spec §3.5, §1.7). Validation always logs the
cross-entropy too, so that runs with different losses stay comparable and early stopping has one
monitor. Frozen parameters (a phase of
:mod:`brainbench.training.phases`) are left out of the optimiser, and modules whose parameters are
all frozen stay in eval mode. Metrics are logged once per epoch only: each MLflow write on SQLite
costs milliseconds. Under DDP (``trainer=ddp_cpu``, ``trainer=ddp``) each process sees its share of the
epoch's segments, so the epoch means and the validation Dice counts are reduced over the processes
before rank 0 logs them (a no-op in one process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTED_LAYERS = (nn.Conv2d, nn.Conv3d, nn.Linear)


def layer_weights(module: nn.Module) -> list[nn.Parameter]:
    """The weights (not biases) of every conv and FC layer of ``module``: what L1/L2 and max-norm bound."""
    return [m.weight for m in module.modules() if isinstance(m, WEIGHTED_LAYERS)]


def frozen_subtrees(module: nn.Module) -> list[nn.Module]:
    """The largest submodules that have parameters, all of them frozen."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        return [module]
    return [m for child in module.children() for m in frozen_subtrees(child)]


class SegmentationTask(pl.LightningModule):
    """Trains ``net`` on ``(inputs, target)`` batches.

    Args:
        net: module mapping ``*inputs`` to logits ``(N, K, ...)`` matching ``target`` ``(N, ...)``.
        loss: ``(logits, target) → scalar`` with a ``name`` (logged as ``train_<name>``), see
            :mod:`brainbench.training.losses`.
        optimizer: partial ``params → Optimizer`` (Hydra ``_partial_: true``).
        scheduler: optional partial ``optimizer → LR scheduler`` stepped once per epoch.
        l1 / l2: penalties on trainable conv/FC weights (DeepMedic spec: 1e-6 / 1e-4).
        foreground_classes: class indices counted as "whole tumour" for the per-epoch Dice.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable, scheduler: Callable | None = None,
                 l1: float = 1e-6, l2: float = 1e-4, foreground_classes: Sequence[int] = (1, 2, 3)):
        super().__init__()
        self.net = net
        self.loss = loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.l1, self.l2 = l1, l2
        self.foreground_classes = tuple(foreground_classes)
        self._weights = layer_weights(net)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.net(*inputs)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for module in frozen_subtrees(self.net):
                module.eval()
        return self

    def _penalty(self) -> torch.Tensor:
        weights = [w for w in self._weights if w.requires_grad]
        l1 = sum(w.abs().sum() for w in weights)
        l2 = sum(w.pow(2).sum() for w in weights)
        return self.l1 * l1 + self.l2 * l2

    def _logits_and_target(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, K, ...) of the batch's inputs and its target (N, ...)."""
        inputs, target = batch
        return self(*inputs), target

    def training_step(self, batch, batch_idx):
        logits, target = self._logits_and_target(batch)
        segmentation_loss = self.loss(logits, target)
        loss = segmentation_loss + self._penalty()
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(target), sync_dist=True)
        self.log(f"train_{self.loss.name}", segmentation_loss, on_step=False, on_epoch=True, batch_size=len(target),
                 sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(3)

    def validation_step(self, batch, batch_idx):
        logits, target = self._logits_and_target(batch)
        self.log("val_cross_entropy", F.cross_entropy(logits, target), on_step=False, on_epoch=True,
                 batch_size=len(target), sync_dist=True)
        if self.loss.name != "cross_entropy":
            self.log(f"val_{self.loss.name}", self.loss(logits, target), on_step=False, on_epoch=True,
                     batch_size=len(target), sync_dist=True)
        classes = torch.tensor(self.foreground_classes, device=target.device)
        pred = torch.isin(logits.argmax(1), classes)
        ref = torch.isin(target, classes)
        self._val_counts += torch.stack([(pred & ref).sum(), pred.sum(), ref.sum()]).float().cpu()

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self._val_counts.to(self.device), reduce_op="sum")  # all processes'
        overlap, n_pred, n_ref = counts.tolist()
        # already summed over processes: sync_dist averages equal values (and keeps Lightning from warning)
        self.log("val_dice_segments", 2 * overlap / (n_pred + n_ref) if n_pred + n_ref else 1.0, sync_dist=True)

    def on_train_start(self) -> None:
        self.train()

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "interval": "epoch"}}
