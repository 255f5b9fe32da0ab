"""The papers' training procedures beyond one plain fit.

- :class:`Phase`: one fit with its own trainable parameters, centre sampler, extractor and epochs.
  Havaei's two-phase training (spec §1.7) is two phases: all layers on class-equiprobable patches,
  then the output layer alone on the natural distribution, everything else frozen. A cascade
  (§1.6) trains its stage 1 as a TwoPathCNN (two phases on 33×33 patches), then stage 2 (two
  phases) with stage 1 frozen. Frozen parameters get no gradient and are left out of the optimiser;
  modules whose parameters are all frozen run in eval mode (no dropout), as at test time.
- Callbacks: :class:`MomentumRamp` (Havaei 0.5 → 0.9), :class:`MaxNorm` (Pylearn2's kernel-norm
  bound) and :class:`EarlyStoppingRestoreBest` (early stopping on validation, best weights kept).
- :class:`GradeSubset`: Pereira trains one model per tumour grade (§2.4).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from brainbench.challenges.base import Case, ChallengeAdapter
from brainbench.data.datamodule import BrainSegmentationDataModule
from brainbench.data.sampling import label_frequencies
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError
from brainbench.training.task import layer_weights

log = logging.getLogger(__name__)


@dataclass
class Phase:
    """One fit of a multi-phase procedure.

    Args:
        name: its key in ``model.phases``; prefixes its MLflow metrics (``<name>-train_loss``) and
            names its checkpoint folder.
        module: dotted path of the submodule trained and called on the patches (``stage1``);
            ``None``: the whole net.
        trainable: parameter-name prefixes, relative to ``module``, that train (``[output_layer]``);
            ``None``: all of ``module``. Every other parameter of the net is frozen.
        sampler: centre sampler of this phase's training patches, and of its validation patches
            unless the data module has its own ``val_sampler``; ``None``: the run's ``sampler.centres``.
            A sampler that depends on a previous stage's output (Dou's hard negatives, spec §5.5) has
            ``prepare(net, cases)``, called with the training and validation cases before the phase.
        segments: extractor of this phase (training and validation); ``None``: the model's
            ``model.segments``.
        max_epochs: epochs of this phase; ``None``: ``trainer.max_epochs``.
        init_output_bias: before the phase, set ``module``'s softmax biases to the log label
            frequencies of the training cases' brain voxels (Havaei §1.5).
    """

    name: str = ""
    module: str | None = None
    trainable: Sequence[str] | None = None
    sampler: object | None = None
    segments: Callable | None = None
    max_epochs: int | None = None
    init_output_bias: bool = False

    def prepare(self, net: nn.Module, datamodule: BrainSegmentationDataModule) -> nn.Module:
        """Freeze, switch the patches and initialise as configured; returns the module to train."""
        module = net.get_submodule(self.module) if self.module else net
        net.requires_grad_(False)
        prefixes = [""] if self.trainable is None else list(self.trainable)
        names = dict(module.named_parameters())
        trained = [n for n in names if any(not p or n == p or n.startswith(f"{p}.") for p in prefixes)]
        if not trained:
            raise BrainbenchConfigError(
                f"phase {self.name!r}: trainable {list(prefixes)} matches no parameter of "
                f"{self.module or 'the net'} (parameters: {sorted({n.split('.')[0] for n in names})})")
        for name in trained:
            names[name].requires_grad_(True)
        if hasattr(self.sampler, "prepare"):
            self.sampler.prepare(net, [*datamodule.train_set.cases, *datamodule.val_set.cases])
        datamodule.use(self.sampler or datamodule.sampler, self.segments or datamodule.extractor)
        if self.init_output_bias:
            module.init_output_bias(label_frequencies(datamodule.train_set.cases, module.n_classes))
        return module


class MomentumRamp(pl.Callback):
    """SGD momentum raised linearly per epoch from ``start`` to ``end`` over ``epochs`` epochs, then
    held (Havaei: 0.5 → 0.9 "gradually", shape not stated, spec §1.7). Restarts with each phase."""

    def __init__(self, start: float = 0.5, end: float = 0.9, epochs: int = 10):
        self.start, self.end, self.epochs = start, end, epochs

    def momentum(self, epoch: int) -> float:
        return self.start + (self.end - self.start) * min(1.0, epoch / max(1, self.epochs - 1))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["momentum"] = self.momentum(trainer.current_epoch)


class MaxNorm(pl.Callback):
    """After each step, every kernel of a trainable conv/FC layer (the weights of one output map,
    dim 0) is rescaled to L2 norm ≤ ``max_norm``: Pylearn2's ``max_kernel_norm``, which Havaei
    used without giving the bound (spec §1.7). ``None`` disables it."""

    def __init__(self, max_norm: float | None = 1.9365):
        self.max_norm = max_norm

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.max_norm is None:
            return
        for weight in layer_weights(pl_module):
            if weight.requires_grad:
                weight.renorm_(2, 0, self.max_norm)


class EarlyStoppingRestoreBest(pl.Callback):
    """Stop a fit after ``patience`` validations without improving ``monitor``; at the end of the
    fit, load the weights of the best validation (Havaei: early stopping on validation, §1.7)."""

    def __init__(self, monitor: str = "val_cross_entropy", mode: str = "min", patience: int = 5):
        if mode not in ("min", "max"):
            raise BrainbenchConfigError(f"early stopping mode: expected min or max, got {mode!r}")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.best: float | None = None
        self.wait = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise BrainbenchConfigError(f"early stopping monitor {self.monitor!r} is not logged; "
                                        f"logged: {sorted(trainer.callback_metrics)}")
        value = float(trainer.callback_metrics[self.monitor])
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best, self.wait = value, 0
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        """Saved in every checkpoint, so that a resumed fit keeps its best weights and its patience count."""
        return {"best": self.best, "wait": self.wait, "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.wait, self.best_state = state_dict["best"], state_dict["wait"], state_dict["best_state"]


GRADE_ALIASES = {"HG": "HGG", "LG": "LGG"}
"""BRATS 2012/2013 name their grade folders ``HG``/``LG``; later editions ``HGG``/``LGG``."""


class GradeSubset(ChallengeAdapter):
    """The cases of one tumour grade, from ``Case.meta["grade"]`` (BRATS 2013 ``HG``/``LG`` and
    BraTS 2015–2019 ``HGG``/``LGG`` folders): Pereira trains a separate model per grade (spec §2.4).

    Releases without grades (BraTS 2020/2021 flat folders, the synthetic data) give no grade per
    case: ungraded cases are kept for every grade (a warning says how many), so each grade's
    model trains on the whole set there.
    """

    def __init__(self, adapter: ChallengeAdapter, grade: str):
        self.adapter, self.grade, self.edition = adapter, _grade(grade), adapter.edition

    def discover(self, root: str | Path) -> list[Case]:
        cases = self.adapter.discover(root)
        ungraded = [c for c in cases if not c.meta.get("grade")]
        selected = [c for c in cases if not c.meta.get("grade") or _grade(c.meta["grade"]) == self.grade]
        if ungraded:
            log.warning("%d of %d cases under %s have no grade: the %s model uses them", len(ungraded),
                        len(cases), root, self.grade)
        if not selected:
            raise BrainbenchDataError(root, f"no {self.grade} case (grades found: "
                                            f"{sorted({str(c.meta.get('grade')) for c in cases})})")
        return selected

    def validate(self, case: Case, check_label_values: bool = True):
        return self.adapter.validate(case, check_label_values)


def _grade(name: str) -> str:
    return GRADE_ALIASES.get(name.upper(), name.upper())
