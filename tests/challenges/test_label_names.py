"""Every edition names its label values (figure legends and notebooks read ``Edition.label_names``), a user's
YAML declaration may name them too, and a declaration that names the wrong values fails where it is made."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from hydra.utils import instantiate

from brainbench.challenges import EDITIONS, get_edition
from brainbench.challenges.custom import load_declaration
from brainbench.config import compose
from brainbench.errors import BrainbenchConfigError
from tests.helpers import run_cli

DECLARATION = """\
    defaults: [custom, _self_]
    declaration:
      name: my_cohort
      cases: "sub-*"
      channels: {t1: "anat/{case}_T1w.nii.gz", flair: "anat/{case}_FLAIR.nii.gz"}
      label: "{root}/derivatives/{case}/{case}_lesion.nii.gz"
      label_values: [0, 1, 2]
      regions: {lesion: [1, 2], enhancing: [2]}
      protocol: isles-2022
      ranking: null
"""


def _declaration_file(folder: Path, label_names: str | None) -> Path:
    """``folder/challenge/my_cohort.yaml`` holding :data:`DECLARATION`, with a ``label_names:`` line when given."""
    text = textwrap.dedent(DECLARATION)
    if label_names is not None:
        text += f"  label_names: {label_names}\n"
    path = folder / "challenge" / "my_cohort.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", list(EDITIONS))
def test_every_edition_names_exactly_its_label_values(name):
    edition = EDITIONS[name]
    assert list(edition.label_names) == list(edition.label_values)
    assert edition.label_names[0] == "background"
    names = list(edition.label_names.values())
    assert all(isinstance(text, str) and text.strip() for text in names)
    assert len(set(names)) == len(names), "a legend needs a distinct name per value"


@pytest.mark.parametrize("name, value, expected", [
    ("brats2013", 3, "non-enhancing tumour"),
    ("brats2020", 1, "necrotic / non-enhancing tumour core (NCR/NET)"),
    ("brats2020", 2, "peritumoural oedema (ED)"),
    ("brats2021", 4, "GD-enhancing tumour (ET)"),
    ("brats2023_men", 3, "enhancing tissue (ET)"),
    ("mrbrains13", 2, "grey matter (GM)"),
    ("mrbrains18", 9, "infarction"),
    ("neobrains12_coronal30", 2, "basal ganglia and thalami"),
    ("isles2015_spes", 2, "penumbra"),
])
def test_names_are_the_organisers(name, value, expected):
    assert EDITIONS[name].label_names[value] == expected


@pytest.mark.parametrize("name", [n for n, e in EDITIONS.items() if e.challenge == "brats"])
def test_each_brats_single_label_region_is_the_label_its_name_abbreviates(name):
    """The ET region (one label value) and the label named ``... (ET)`` are the same value, in every era
    that abbreviates its names: the names agree with the independently declared regions."""
    edition = EDITIONS[name]
    for region, values in edition.regions.items():
        tagged = [v for v, text in edition.label_names.items() if text.endswith(f"({region})")]
        if tagged:
            assert tagged == list(values), region


def test_a_declaration_missing_a_value_fails_naming_the_edition():
    brats2020 = EDITIONS["brats2020"]
    without_et = {v: text for v, text in brats2020.label_names.items() if v != 4}
    with pytest.raises(BrainbenchConfigError, match=r"edition brats2020: .*no name for \[4\]"):
        replace(brats2020, label_names=without_et)
    with pytest.raises(BrainbenchConfigError, match=r"edition brats2020: .*not in label_values \[3\]"):
        replace(brats2020, label_names={**brats2020.label_names, 3: "label 3"})
    with pytest.raises(BrainbenchConfigError, match=r"edition brats2020: .*blank names for \[2\]"):
        replace(brats2020, label_names={**brats2020.label_names, 2: " "})


def test_a_declaration_keeps_the_label_values_order():
    brats2020 = EDITIONS["brats2020"]
    shuffled = dict(reversed(list(brats2020.label_names.items())))
    assert list(replace(brats2020, label_names=shuffled).label_names) == [0, 1, 2, 4]


def test_custom_yaml_names_its_labels(tmp_path):
    path = _declaration_file(tmp_path, "{0: background, 1: oedema, 2: enhancing lesion}")
    assert load_declaration(path).label_names == {0: "background", 1: "oedema", 2: "enhancing lesion"}


def test_custom_yaml_without_label_names_gets_default_names(tmp_path):
    path = _declaration_file(tmp_path, None)
    assert load_declaration(path).label_names == {0: "background", 1: "label 1", 2: "label 2"}


def test_custom_yaml_composed_by_hydra_keeps_its_label_names(tmp_path):
    _declaration_file(tmp_path, "{2: enhancing lesion, 1: oedema, 0: background}")
    cfg = compose(["challenge=my_cohort"], config_dir=tmp_path)
    adapter = instantiate(cfg.challenge.adapter)
    assert adapter.edition.label_names == {0: "background", 1: "oedema", 2: "enhancing lesion"}
    assert list(adapter.edition.label_names) == [0, 1, 2]
    assert get_edition(cfg.challenge.declaration).label_names == adapter.edition.label_names


@pytest.mark.parametrize("label_names, message", [
    ("{0: background, 1: oedema}", "no name for [2]"),
    ("[background, oedema, enhancing]", "label_names must map label values to names"),
])
def test_custom_yaml_with_wrong_label_names_fails_in_one_line(tmp_path, label_names, message):
    path = _declaration_file(tmp_path, label_names)
    with pytest.raises(BrainbenchConfigError, match="my_cohort") as error:
        load_declaration(path)
    assert message in str(error.value) and str(path) in str(error.value)
    result = run_cli("data", "check", "--challenge", str(path), "--root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
