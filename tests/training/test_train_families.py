"""`brainbench train challenge=EDITION` on the synthetic look-alike of every challenge family (issues 4, 9).

Each run must beat the best trivial labelling of its held-out case: the whole brain given one label
(all background scores Dice 0 on every labelled region), the label chosen to maximise the mean Dice
over the edition's regions. Computed here from the reference and image files with numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from brainbench.challenges import ChallengeAdapter
from tests.helpers import run_cli as brainbench

SMALL = ["data.synth.n_cases=4", "model.net.feature_maps=[8,8,8,8,8,8,12,12]", "model.net.fc_feature_maps=[16,16]",
         "sampler.segments_per_epoch=200", "sampler.val_segments=10", "sampler.batch_size=10", "trainer.max_epochs=3",
         "data.datamodule.val_fraction=0.25", "data.datamodule.test_fraction=0.25", "trainer.enable_progress_bar=false"]
"""A DeepMedic of a quarter width for 3 epochs of 20 steps: about a minute per family on 2 cores."""
FAMILIES = {
    "brats2013": [],
    "isles2022": [],
    "msseg2016": [],
    "mrbrains13": ["data.synth.spacing_mm=[2.0,2.0,3.0]"],
    "neobrains12_axial40": ["data.synth.spacing_mm=2.0"],
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def best_constant_labelling(edition: str, root: Path, case_id: str) -> tuple[float, int, list[str]]:
    """Mean Dice over the regions labelled in the case when every non-zero voxel of the first channel gets
    one label value, for the best such value; that value; those regions."""
    adapter = ChallengeAdapter(edition)
    (case,) = [c for c in adapter.discover(root) if c.case_id == case_id]
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))  # NIfTI or MetaImage (BRATS 2013)
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(next(iter(case.images.values()))))) != 0
    regions = {region: np.isin(reference, labels) for region, labels in adapter.edition.regions.items()}
    regions = {region: mask for region, mask in regions.items() if mask.any()}
    assert regions, "the held-out case has no labelled region"
    scores = {value: np.mean([dice(brain, mask) if value in adapter.edition.regions[region] else 0.0
                              for region, mask in regions.items()])
              for value in adapter.edition.label_values if value != 0}
    value = max(scores, key=scores.get)
    return scores[value], value, list(regions)


@pytest.mark.slow
@pytest.mark.parametrize("edition", sorted(FAMILIES))
def test_train_on_synthetic_look_alike_beats_trivial_baselines(tmp_path, edition):
    result = brainbench("train", f"challenge={edition}", *SMALL, *FAMILIES[edition], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Leaderboard — experiment {edition}" in result.stdout
    (metrics_csv,) = list((tmp_path / "runs").rglob("metrics.csv"))
    frame = pd.read_csv(metrics_csv).query("metric == 'dice'")
    (case_id,) = frame["case"].unique()
    (root,) = [p.parent for p in (tmp_path / "datasets").rglob("brainbench_synthetic.json")]
    baseline, value, regions = best_constant_labelling(edition, root, str(case_id))
    achieved = frame.set_index("region").loc[regions, "value"].mean()
    assert achieved > baseline, f"{edition}: mean Dice {achieved:.3f} ≤ {baseline:.3f} of the brain labelled {value}"
