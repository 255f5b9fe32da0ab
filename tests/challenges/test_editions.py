"""Every registered edition: its declaration is complete and consistent, and its synthetic release,
as laid out on disk, is found and scored by ``brainbench evaluate --ref``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra.utils import get_method

from brainbench.challenges import EDITIONS, Unranked
from brainbench.cli import main
from brainbench.data.synth import synthesize
from brainbench.evaluation.protocols import METRIC_UNITS, PROTOCOLS
from brainbench.evaluation.ranking import RULES, metric_sign
from brainbench.io import load_label, read_grid, save_volume


@pytest.mark.parametrize("name", list(EDITIONS))
def test_declaration_is_complete(name):
    edition = EDITIONS[name]
    assert edition.name == name and edition.challenge and edition.source
    assert edition.modalities and set(edition.modalities) <= set(edition.layout.channels)
    assert len(set(edition.modalities)) == len(edition.modalities)
    assert 0 in edition.label_values and edition.regions
    for region, values in edition.regions.items():
        assert values and set(values) <= set(edition.label_values) - {0}, region
    assert edition.reference_grid is None or edition.reference_grid in edition.modalities
    assert edition.layout.expected
    assert edition.protocol in PROTOCOLS
    if isinstance(edition.ranking, Unranked):
        assert len(edition.ranking.reason) > 20
    else:
        assert edition.ranking in RULES
    assert edition.synthetic is not None and callable(get_method(edition.synthetic.generator))


@pytest.mark.parametrize("name", [n for n, e in EDITIONS.items() if not isinstance(e.ranking, Unranked)])
def test_ranked_metrics_are_protocol_metrics(name):
    edition = EDITIONS[name]
    ranked = RULES[edition.ranking].metrics
    assert set(ranked) <= set(PROTOCOLS[edition.protocol].metrics), (ranked, edition.protocol)
    for metric in ranked:
        assert metric in METRIC_UNITS and metric_sign(metric) in (1.0, -1.0)


def test_brats2016_ranks_like_the_vsd_table_and_2023_on_lesionwise_metrics():
    assert EDITIONS["brats2016"].ranking == EDITIONS["brats2013"].ranking == "vsd-mean-of-metric-ranks"
    assert RULES[EDITIONS["brats2023_gli"].ranking].metrics == ("lesion_dice", "lesion_hd95")
    assert RULES[EDITIONS["brats2020"].ranking].metrics == ("dice", "hd95")


def _coarse(spacing):
    """A spacing 2-3× coarser than the declared default (still inside the generators' 0.3-4 mm range)."""
    if isinstance(spacing, tuple):
        return [min(4.0, 2.0 * s) for s in spacing]
    return min(4.0, 2.0 * spacing)


@pytest.mark.parametrize("name", list(EDITIONS))
def test_evaluate_reads_the_synthetic_release_as_released(name, tmp_path, capsys):
    edition = EDITIONS[name]
    root = tmp_path / "release"
    synthesize(name, root, n_cases=2, spacing_mm=_coarse(edition.synthetic.spacing_mm), seed=1)
    references = edition.find_references(root)
    labelled = [case for case in edition.layout.scan(root, edition, require_labels=False)[0] if case.label]
    assert sorted(references) == sorted(case.case_id for case in labelled) and len(references) >= 2
    pred = tmp_path / "pred"
    overlap = "dice" if "dice" in PROTOCOLS[edition.protocol].metrics else "lesion_f1"  # dou-2016: detections only
    first = None
    for case_id, path in references.items():
        labels, grid = load_label(path)
        if first is None and np.any(labels):  # one imperfect prediction: drop the last labelled slab,
            first = case_id                   # or every lesion where detections are scored
            labels = labels.copy()
            labels[..., int(np.nonzero(labels)[-1].max()) if overlap == "dice" else 0:] = 0
        save_volume(labels, grid, pred / f"{case_id}.nii.gz")

    code = main(["evaluate", "--challenge", name, "--pred", str(pred), "--ref", str(root),
                 "--out", str(tmp_path / "metrics.csv"), "--workers", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    scored = pd.read_csv(tmp_path / "metrics.csv", dtype={"case": str})
    assert sorted(scored["case"].unique()) == sorted(references)
    assert set(scored["metric"]) == set(PROTOCOLS[edition.protocol].metrics)
    assert set(scored["region"]) == set(edition.regions)
    dice = scored[scored["metric"] == overlap].set_index(["case", "region"])["value"]
    for case_id, path in references.items():
        reference, _ = load_label(path)
        for region, values in edition.regions.items():
            if np.isin(reference, values).any() and case_id != first:
                assert dice[(case_id, region)] == pytest.approx(1.0), (case_id, region)
    assert (dice.loc[first] < 1.0).any(), "the imperfect prediction must score below 1 somewhere"


def test_flat_reference_folder_is_accepted(tmp_path):
    root = tmp_path / "release"
    synthesize("isles2022", root, n_cases=2, spacing_mm=4.0, seed=1)
    flat = tmp_path / "flat"
    for case_id, path in EDITIONS["isles2022"].find_references(root).items():
        labels, grid = load_label(path)
        save_volume(labels, grid, flat / f"{case_id}.nii.gz")
    references = EDITIONS["isles2022"].find_references(flat)
    assert sorted(references) == ["sub-strokecase0001", "sub-strokecase0002"]
    assert all(read_grid(p).shape for p in references.values())
