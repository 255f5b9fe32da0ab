"""`brainbench train challenge=EDITION` on the synthetic look-alike of every challenge family (issues 4, 9).

Each run must beat the best trivial labelling of its held-out case: the whole brain given one label
(all background scores Dice 0 on every labelled region), the label chosen to maximise the mean Dice
over the edition's regions. Computed here from the reference and image files with numpy.
"""

from __future__ import annotations

import pytest

from tests.helpers import held_out_dice_and_baseline
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


@pytest.mark.slow
@pytest.mark.parametrize("edition", sorted(FAMILIES))
def test_train_on_synthetic_look_alike_beats_trivial_baselines(tmp_path, edition):
    """Run as the README's quiet line, ``BRAINBENCH_QUIET=1 brainbench train``: the results table is printed,
    the epoch lines and INFO messages are not, and they are in the run's log file."""
    result = brainbench("train", f"challenge={edition}", *SMALL, *FAMILIES[edition], cwd=tmp_path,
                        env={"BRAINBENCH_QUIET": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"— {edition} (" in result.stdout  # the run's results table
    assert "Epoch " not in result.stdout and "Compare runs:" not in result.stdout
    (log,) = list((tmp_path / "runs").rglob("run.log"))
    assert "Epoch 3/3" in log.read_text()
    achieved, baseline, value = held_out_dice_and_baseline(tmp_path, edition)
    assert achieved > baseline, f"{edition}: mean Dice {achieved:.3f} ≤ {baseline:.3f} of the brain labelled {value}"
