"""The loss group: each loss against its formula evaluated by hand in numpy, ignored voxels, config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from brainbench.config import compose
from brainbench.errors import BrainbenchConfigError
from brainbench.pipeline import build_parts
from brainbench.training.losses import (CrossEntropy, CrossEntropyDice, SensitivitySpecificity, SoftDice,
                                        WeightedCrossEntropy)

LOSSES = ["ce", "weighted_ce", "dice", "ce_dice", "sens_spec"]


@pytest.fixture
def batch():
    """Logits (2, 3, 4, 5) and targets (2, 4, 5) with a few ignored voxels (-100)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 5)) * 2
    target = rng.integers(0, 3, size=(2, 4, 5))
    target[0, 0, :3] = -100
    return logits, target


def numpy_softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kept_voxels(logits, target):
    """(probabilities (M, K), labels (M,)) of the voxels not ignored, by explicit loops."""
    probabilities, labels = [], []
    p = numpy_softmax(logits)
    for n in range(target.shape[0]):
        for index in np.ndindex(target.shape[1:]):
            if target[(n, *index)] != -100:
                probabilities.append(p[(n, slice(None), *index)])
                labels.append(target[(n, *index)])
    return np.array(probabilities), np.array(labels)


def value(loss, logits, target) -> float:
    return float(loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target)))


def test_cross_entropy_is_the_mean_negative_log_probability_of_kept_voxels(batch):
    p, y = kept_voxels(*batch)
    expected = -np.mean(np.log(p[np.arange(len(y)), y]))
    assert value(CrossEntropy(3), *batch) == pytest.approx(expected, rel=1e-5)


def test_weighted_cross_entropy_divides_by_the_summed_weights(batch):
    weights = np.array([0.2, 1.0, 3.0])
    p, y = kept_voxels(*batch)
    expected = -np.sum(weights[y] * np.log(p[np.arange(len(y)), y])) / np.sum(weights[y])
    assert value(WeightedCrossEntropy(3, weights.tolist()), *batch) == pytest.approx(expected, rel=1e-5)


def test_soft_dice_over_the_batch_leaves_background_out(batch):
    p, y = kept_voxels(*batch)
    dices = []
    for k in (1, 2):
        g = (y == k).astype(float)
        dices.append((2 * np.sum(p[:, k] * g) + 1e-5) / (np.sum(p[:, k]) + np.sum(g) + 1e-5))
    assert value(SoftDice(3), *batch) == pytest.approx(1 - np.mean(dices), rel=1e-5)
    assert value(CrossEntropyDice(3, ce_weight=0.5, dice_weight=2.0), *batch) == pytest.approx(
        0.5 * value(CrossEntropy(3), *batch) + 2.0 * (1 - np.mean(dices)), rel=1e-5)


def test_soft_dice_of_a_confident_correct_prediction_is_zero():
    target = np.array([[0, 1, 2, 2, 1, 0]])
    logits = np.moveaxis(np.eye(3)[target] * 40.0, -1, 1)
    assert value(SoftDice(3), logits, target) == pytest.approx(0.0, abs=1e-6)
    assert value(SoftDice(3), logits, (target + 1) % 3) == pytest.approx(1.0, abs=1e-5)


def test_sensitivity_specificity_follows_brosch_per_foreground_class(batch):
    p, y = kept_voxels(*batch)
    r = 0.05
    terms = []
    for k in (1, 2):
        s = (y == k).astype(float)
        error = (s - p[:, k]) ** 2
        terms.append(r * np.sum(error * s) / np.sum(s) + (1 - r) * np.sum(error * (1 - s)) / np.sum(1 - s))
    assert value(SensitivitySpecificity(3, r=r), *batch) == pytest.approx(np.mean(terms), rel=1e-4)


def test_a_hand_worked_sensitivity_specificity_value():
    # two voxels: lesion predicted 0.5 (error 0.25), background predicted 0.5 (error 0.25); r = 0.2
    # → 0.2 · 0.25 / 1 + 0.8 · 0.25 / 1 = 0.25
    logits = np.zeros((1, 2, 2))
    target = np.array([[1, 0]])
    assert value(SensitivitySpecificity(2, r=0.2), logits, target) == pytest.approx(0.25, rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_voxels_change_nothing(name, batch):
    logits, target = batch
    loss = instantiate(compose([f"loss={name}", "loss.weights=[0.5,1,2]"] if name == "weighted_ce"
                               else [f"loss={name}"]).loss, n_classes=3)
    changed = logits.copy()
    changed[0, :, 0, :3] = np.random.default_rng(1).normal(size=(3, 3)) * 10
    assert value(loss, changed, target) == pytest.approx(value(loss, logits, target), rel=1e-6)
    tensor = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    loss(tensor, torch.tensor(target)).backward()
    assert torch.isfinite(tensor.grad).all() and tensor.grad[0, :, 0, :3].abs().max() == 0
    assert tensor.grad.abs().sum() > 0


def test_weighted_ce_without_weights_is_a_config_error_before_data_work(tmp_path):
    cfg = compose(["loss=weighted_ce", f"paths.data_dir={tmp_path}"])
    with pytest.raises(BrainbenchConfigError, match=r"loss.weights: loss=weighted_ce needs 4 non-negative"):
        build_parts(cfg)
    assert not any(tmp_path.iterdir())
    parts = build_parts(compose(["loss=weighted_ce", "loss.weights=[0.1,1,1,1]", f"paths.data_dir={tmp_path}"]))
    assert isinstance(parts.loss, WeightedCrossEntropy) and parts.loss.weights.tolist() == pytest.approx([0.1, 1, 1, 1])


@pytest.mark.parametrize("override, message", [
    ("loss.r=1.5", r"loss.r: must be within \[0, 1\]"),
    ("loss.smooth=-1", r"loss.smooth: must be >= 0"),
])
def test_bad_loss_settings_name_the_key(override, message, tmp_path):
    name = "sens_spec" if "loss.r" in override else "dice"
    with pytest.raises(BrainbenchConfigError, match=message):
        build_parts(compose([f"loss={name}", override, f"paths.data_dir={tmp_path}"]))
