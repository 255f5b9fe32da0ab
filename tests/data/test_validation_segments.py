"""Validation segments as each model's config sets them: DeepMedic validates like the reference (centres
uniform over the brain, no reflection, spec §3.5); Havaei and Pereira validate on their training sampler."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from brainbench.challenges import ChallengeAdapter
from brainbench.config import compose
from brainbench.data.cache import PreprocessedCache
from brainbench.data.preprocess import ZScoreInBrain
from brainbench.models.deepmedic import extract_label_block, extract_training_pair

DRAWS = 1500


def _datamodule(overrides, brats_tree, tmp_path):
    """The data module as ``brainbench train`` builds it from the composed config."""
    cfg = compose(overrides)
    module = instantiate(cfg.data.datamodule, _partial_=True)(
        adapter=ChallengeAdapter("brats2020"), cache=PreprocessedCache(tmp_path / "cache", ZScoreInBrain()),
        root=brats_tree, sampler=instantiate(cfg.sampler.centres), extractor=instantiate(cfg.model.segments), seed=0)
    module.setup()
    return module


def test_deepmedic_validates_on_unflipped_segments_centred_uniformly_over_the_brain(brats_tree, tmp_path):
    # every training segment is reflected here, so a reflected validation segment would show
    module = _datamodule(["model=deepmedic", f"sampler.val_segments={DRAWS}", "model.segments.flip_x_probability=1.0"],
                         brats_tree, tmp_path)
    (case,) = module.val_set.cases
    image, label, brain = np.asarray(case.image), np.asarray(case.label), np.asarray(case.brain)
    centres = []
    for i in range(DRAWS):
        (normal, subsampled), target = module.val_set[i]
        # z-scored random intensities identify the centre voxel of the segment
        (centre,) = np.argwhere(np.all(image == normal[:, 12, 12, 12].numpy()[:, None, None, None], axis=0))
        centre = tuple(int(c) for c in centre)
        normal_ref, subsampled_ref = extract_training_pair(image, centre)
        np.testing.assert_array_equal(normal.numpy(), normal_ref)
        np.testing.assert_array_equal(subsampled.numpy(), subsampled_ref)
        np.testing.assert_array_equal(target.numpy(), extract_label_block(label, centre))
        centres.append(centre)
    centres = np.array(centres)
    assert brain[tuple(centres.T)].all()
    tumour_fraction = (label[brain] > 0).mean()  # about 8 % of the brain; the training sampler gives 50 %
    assert (label[tuple(centres.T)] > 0).mean() == pytest.approx(tumour_fraction, abs=0.025)
    per_slab = np.bincount(centres[:, 0], minlength=brain.shape[0]) / DRAWS
    assert per_slab == pytest.approx(brain.sum(axis=(1, 2)) / brain.sum(), abs=0.025)


@pytest.mark.parametrize("model", ["havaei_twopath", "havaei_inputcascade", "pereira_hgg"])
def test_patch_models_validate_on_their_training_sampler_and_augmentation(model):
    datamodule = compose([f"model={model}"]).data.datamodule
    assert datamodule.val_sampler is None and datamodule.val_augment is True


def test_deepmedic_config_names_the_reference_validation():
    datamodule = compose(["model=deepmedic"]).data.datamodule
    assert datamodule.val_sampler._target_.endswith("BrainUniformSampler") and datamodule.val_augment is False
