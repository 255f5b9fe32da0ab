"""Training procedures on real cached cases: phases, frozen stages, callbacks, grades, schedules."""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from brainbench.challenges import ChallengeAdapter
from brainbench.config import compose
from brainbench.data.cache import PreprocessedCache
from brainbench.data.datamodule import BrainSegmentationDataModule
from brainbench.data.preprocess import ZScoreInBrain
from brainbench.data.sampling import BrainUniformSampler, ClassFrequencySampler, label_frequencies
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError
from brainbench.inference.postprocess import remove_small_components
from brainbench.models.havaei import InputCascadeCNN, TwoPathCNN
from brainbench.models.patches import AxialPatches
from brainbench.training.losses import CrossEntropy
from brainbench.training.optim import linear_decay
from brainbench.training.phases import EarlyStoppingRestoreBest, GradeSubset, MaxNorm, MomentumRamp, Phase
from brainbench.training.task import SegmentationTask
from tests.helpers import write_brats_case

TINY = {"in_channels": 4, "n_classes": 4, "local_maps": (4, 4), "global_maps": 6}


@pytest.fixture
def datamodule(brats_tree, tmp_path):
    module = BrainSegmentationDataModule(
        ChallengeAdapter("brats2020"), PreprocessedCache(tmp_path / "cache", ZScoreInBrain()), brats_tree,
        sampler=ClassFrequencySampler(0.0), extractor=AxialPatches(margin=(16, 16)), batch_size=8,
        segments_per_epoch=24, val_segments=16, seed=0)
    module.setup()
    return module


def fit(phase: Phase, net, datamodule, callbacks=(), max_epochs: int = 2, lr: float = 0.005) -> pl.Trainer:
    """The same steps as ``brainbench.training.run`` for one phase, without MLflow."""
    torch.manual_seed(0)
    task = SegmentationTask(phase.prepare(net, datamodule), loss=CrossEntropy(4),
                            optimizer=partial(torch.optim.SGD, lr=lr, momentum=0.5),
                            l1=1e-6, l2=1e-4, foreground_classes=range(1, 4))
    trainer = pl.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks),
                         accelerator="cpu")
    trainer.fit(task, datamodule=datamodule)
    return trainer


def snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def changed(before, net) -> set[str]:
    return {k for k, v in net.state_dict().items() if not torch.equal(before[k], v)}


class TrainingModes(pl.Callback):
    """Records the training flag of a submodule at every training step."""

    def __init__(self, module):
        self.modes = []
        module.register_forward_pre_hook(lambda m, _: self.modes.append(m.training) if torch.is_grad_enabled() else None)


def test_phase_two_retrains_only_the_output_layer(datamodule):
    net = TwoPathCNN(**TINY)
    fit(Phase("equiprobable", sampler=ClassFrequencySampler(0.0), init_output_bias=True), net, datamodule)
    before = snapshot(net)
    trainer = fit(Phase("output", trainable=["output_layer"], sampler=ClassFrequencySampler(1.0)), net, datamodule,
                  callbacks=[MomentumRamp(0.5, 0.9, epochs=3), MaxNorm(1.0)])
    assert changed(before, net) == {"output_layer.weight", "output_layer.bias"}
    (group,) = trainer.optimizers[0].param_groups
    assert [p.shape for p in group["params"]] == [net.output_layer.weight.shape, net.output_layer.bias.shape]
    assert group["momentum"] == pytest.approx(0.7)  # second epoch of a 3-epoch ramp 0.5 → 0.9
    assert datamodule.train_set.sampler.exponent == 1.0 and datamodule.val_set.sampler.exponent == 1.0


class ForwardTwice(pl.Callback):
    """At every training step, runs the net twice on the batch in the modes training left it in; calls
    ``model.train()`` at each epoch start, as Lightning's loops have done (and may do again)."""

    def __init__(self):
        self.same, self.training = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.train()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        inputs, _ = batch
        with torch.no_grad():
            self.same.append(torch.equal(pl_module(*inputs), pl_module(*inputs)))
        self.training.append(pl_module.training)


def test_phase_two_frozen_layers_drop_nothing_while_the_output_layer_trains(datamodule):
    net = TwoPathCNN(**TINY)
    first, second = ForwardTwice(), ForwardTwice()
    fit(Phase("equiprobable"), net, datamodule, callbacks=[first])
    fit(Phase("output", trainable=["output_layer"]), net, datamodule, callbacks=[second])
    assert all(first.training) and all(second.training) and len(second.same) == 6  # 2 epochs × 3 steps
    assert not any(first.same)  # phase 1: dropout on every maxout layer's output
    assert all(second.same)  # phase 2: the frozen layers run as at test time


def test_output_bias_starts_at_log_label_frequencies(datamodule):
    net = TwoPathCNN(**TINY)
    Phase("equiprobable", init_output_bias=True).prepare(net, datamodule)
    expected = np.log(label_frequencies(datamodule.train_set.cases, 4))
    np.testing.assert_allclose(net.output_layer.bias.detach().numpy(), expected, rtol=1e-6)


def test_cascade_trains_stage1_alone_then_stage2_with_stage1_frozen_in_eval_mode(datamodule):
    net = InputCascadeCNN(**TINY)
    datamodule.extractor = AxialPatches(margin=net.margin)
    before = snapshot(net)
    stage1_modes = TrainingModes(net.stage1)
    fit(Phase("stage1", module="stage1", segments=AxialPatches(margin=(16, 16))), net, datamodule)
    assert changed(before, net) and all(k.startswith("stage1.") for k in changed(before, net))
    assert stage1_modes.modes and all(stage1_modes.modes)  # dropout active while stage 1 trains
    stage1_modes.modes.clear()
    before = snapshot(net)
    fit(Phase("stage2", trainable=["stage2"]), net, datamodule)
    assert changed(before, net) and all(k.startswith("stage2.") for k in changed(before, net))
    assert stage1_modes.modes and not any(stage1_modes.modes)
    assert datamodule.train_set.extractor is datamodule.extractor  # the cascade's own 65×65 windows again


def test_phase_with_unknown_trainable_prefix_names_the_parameters(datamodule):
    with pytest.raises(BrainbenchConfigError,
                       match=r"phase 'output': trainable \['output_layr'\] matches no parameter .*'output_layer'"):
        Phase("output", trainable=["output_layr"]).prepare(TwoPathCNN(**TINY), datamodule)


def test_phase_keeps_a_configured_validation_sampler_and_its_augmentation(datamodule):
    datamodule.val_sampler = BrainUniformSampler()
    datamodule.val_augment = False
    datamodule.split = None
    datamodule.setup()
    phase_sampler, phase_patches = ClassFrequencySampler(1.0), AxialPatches(margin=(16, 16), rotate_90=True)
    Phase("output", trainable=["output_layer"], sampler=phase_sampler, segments=phase_patches).prepare(
        TwoPathCNN(**TINY), datamodule)
    assert datamodule.train_set.sampler is phase_sampler and datamodule.train_set.augment
    assert datamodule.val_set.sampler is datamodule.val_sampler and not datamodule.val_set.augment
    assert datamodule.train_set.extractor is phase_patches and datamodule.val_set.extractor is phase_patches


def test_max_norm_bounds_every_trainable_kernel(datamodule):
    net = TwoPathCNN(**TINY, init_range=0.2)
    fit(Phase("all"), net, datamodule, callbacks=[MaxNorm(0.3)], max_epochs=1)
    for layer in (net.local1.conv, net.local2.conv, net.global1.conv, net.output_layer):
        assert layer.weight.detach().flatten(1).norm(dim=1).max() <= 0.3 + 1e-5


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(datamodule):
    class Record(pl.Callback):
        def __init__(self):
            self.values, self.states = [], []

        def on_validation_end(self, trainer, pl_module):
            self.values.append(float(trainer.callback_metrics["val_cross_entropy"]))
            self.states.append(snapshot(pl_module.net))

    record, stopper = Record(), EarlyStoppingRestoreBest(monitor="val_cross_entropy", mode="min", patience=1)
    net = TwoPathCNN(**TINY)
    fit(Phase("all"), net, datamodule, callbacks=[record, stopper], max_epochs=6, lr=0.5)
    best = int(np.argmin(record.values))
    assert stopper.best == pytest.approx(record.values[best])
    assert len(record.values) == min(6, best + 2)  # one validation without improvement, then stop
    assert not changed(record.states[best], net)
    assert changed(record.states[-1], net) or best == len(record.values) - 1


def test_grade_subset_reads_grade_folders(tmp_path, caplog):
    graded = tmp_path / "graded"
    write_brats_case(graded / "HGG", "Brats17_A_1", seed=1)
    write_brats_case(graded / "HGG", "Brats17_A_2", seed=2)
    write_brats_case(graded / "LGG", "Brats17_B_1", seed=3)
    adapter = ChallengeAdapter("brats2017")
    assert [c.case_id for c in GradeSubset(adapter, "HGG").discover(graded)] == ["Brats17_A_1", "Brats17_A_2"]
    assert [c.case_id for c in GradeSubset(adapter, "LGG").discover(graded)] == ["Brats17_B_1"]
    assert [c.case_id for c in GradeSubset(adapter, "lg").discover(graded)] == ["Brats17_B_1"]  # BRATS 2013 "LG"
    with pytest.raises(BrainbenchDataError, match="no GBM case"):
        GradeSubset(adapter, "GBM").discover(graded)
    flat = tmp_path / "flat"
    for i in range(2):
        write_brats_case(flat, f"BraTS20_Training_00{i + 1}", seed=i)
    with caplog.at_level(logging.WARNING):
        assert len(GradeSubset(ChallengeAdapter("brats2020"), "LGG").discover(flat)) == 2
    assert "2 of 2 cases" in caplog.text


def test_linear_decay_goes_from_lr_to_end_factor_then_holds():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3, momentum=0.9, nesterov=True)
    scheduler = linear_decay(optimizer, end_factor=0.01, epochs=20)
    lrs = []
    for _ in range(22):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(3e-3) and lrs[19] == pytest.approx(3e-5) and lrs[21] == pytest.approx(3e-5)
    assert np.diff(lrs[:20]) == pytest.approx([(3e-5 - 3e-3) / 19] * 19)


def test_small_tumour_components_are_removed_by_volume():
    classes = np.zeros((30, 30, 30), np.int64)
    classes[2:12, 2:12, 2:12] = 2          # 1000 voxels = 8000 mm³ at 2 mm
    classes[5:7, 5:7, 5:7] = 3
    classes[20:23, 20:23, 20:23] = 1       # 27 voxels = 216 mm³
    classes[25, 25, 25] = 3                # a single voxel
    kept = remove_small_components(classes, voxel_volume_mm3=8.0, min_volume_mm3=1000.0)
    np.testing.assert_array_equal(kept[:15, :15, :15], classes[:15, :15, :15])
    assert not kept[15:].any()
    assert remove_small_components(classes, voxel_volume_mm3=8.0, min_volume_mm3=9000.0).sum() == 0


def test_deepmedic_halves_the_learning_rate_after_the_reference_epochs():
    """The reference lowers the LR at the end of (0-based) epochs 12, 16, 19, ... of its predefined
    schedule (dm_theano_v0.6.1_depr routines/training.py: ``numberOfEpochsTrained in
    predefinedSchedule`` before the count is increased), so 13 epochs run at 1e-3 and 35 epochs see 7
    halvings. Learning rates per epoch, worked by hand."""
    expected = ([1e-3] * 13 + [5e-4] * 4 + [2.5e-4] * 3 + [1.25e-4] * 3 + [6.25e-5] * 3 + [3.125e-5] * 3
                + [1.5625e-5] * 3 + [7.8125e-6] * 3)
    cfg = compose(["model=deepmedic"])

    class Record(pl.Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    task = SegmentationTask(torch.nn.Conv3d(1, 2, 1), loss=CrossEntropy(2), optimizer=instantiate(cfg.model.optimizer),
                            scheduler=instantiate(cfg.model.scheduler))
    batch = ((torch.ones(1, 1, 1, 1, 1),), torch.zeros(1, 1, 1, 1, dtype=torch.long))
    trainer = pl.Trainer(max_epochs=35, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[record := Record()], accelerator="cpu",
                         limit_val_batches=0)
    trainer.fit(task, train_dataloaders=DataLoader([batch], batch_size=None))
    assert len(expected) == 35 and record.lrs == pytest.approx(expected, rel=1e-9)
