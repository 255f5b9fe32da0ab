"""`brainbench train challenge=EDITION` on the synthetic look-alike of every challenge family (issue 4)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.training.test_train_e2e import TINY, brainbench

FAMILIES = {
    "brats2013": [],
    "isles2022": [],
    "msseg2016": [],
    "mrbrains13": ["data.synth.spacing_mm=[2.0,2.0,3.0]"],
    "neobrains12_axial40": ["data.synth.spacing_mm=2.0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("edition", sorted(FAMILIES))
def test_train_on_synthetic_look_alike(tmp_path, edition):
    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    result = brainbench("train", f"challenge={edition}", *overrides, "trainer.max_epochs=1", *FAMILIES[edition],
                        cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Leaderboard — experiment {edition}" in result.stdout
    (metrics_csv,) = list((tmp_path / "runs").rglob("metrics.csv"))
    frame = pd.read_csv(metrics_csv)
    assert frame["case"].nunique() == 1 and frame["value"].notna().any()
