"""k-fold cross-validation splits: the held-out test set of the plain split, folds that partition the
rest by subject, and splits stored once and read back by every later run."""

from __future__ import annotations

import json

import pytest

from brainbench.data.datamodule import CaseSplit, CrossValidationSplits
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

CASES = [f"case{i:02d}" for i in range(11)]


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_partition_the_non_test_cases_and_keep_the_plain_test_set(folds):
    splits = CrossValidationSplits.deal(CASES, test_fraction=0.2, folds=folds, seed=4)
    plain = CaseSplit.from_fractions(CASES, val_fraction=0.2, test_fraction=0.2, seed=4)
    assert splits.test == plain.test and len(splits.test) == 2  # round(0.2 · 11)
    dealt = [case for fold in splits.folds for case in fold]
    assert sorted(dealt + list(splits.test)) == CASES and len(set(dealt)) == len(dealt)
    sizes = [len(fold) for fold in splits.folds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 9
    for k in range(folds):
        split = splits.split(k)
        assert split.val == splits.folds[k] and split.test == splits.test
        assert sorted(split.train + split.val) == sorted(dealt) and not set(split.train) & set(split.val)


def test_time_points_of_one_subject_stay_in_one_fold():
    cases = [f"patient{p}_{t}" for p in range(1, 7) for t in (1, 2)]
    subjects = {case: case.split("_")[0] for case in cases}
    splits = CrossValidationSplits.deal(cases, test_fraction=0.2, folds=2, seed=0, subjects=subjects)
    for subset in (splits.test, *splits.folds):
        patients = {subjects[case] for case in subset}
        assert sorted(subset) == sorted(case for case in cases if subjects[case] in patients)


def test_stored_splits_are_reused_and_checked(tmp_path):
    first, path = CrossValidationSplits.stored(tmp_path, CASES, 0.2, 3, seed=1)
    assert path.is_file() and path.parent == tmp_path
    stored = json.loads(path.read_text())
    stored["folds"][0], stored["folds"][1] = stored["folds"][1], stored["folds"][0]  # a user edits the file
    path.write_text(json.dumps(stored))
    second, same = CrossValidationSplits.stored(tmp_path, CASES, 0.2, 3, seed=1)
    assert same == path and second.folds[0] == first.folds[1] and second.test == first.test
    other, other_path = CrossValidationSplits.stored(tmp_path, CASES, 0.2, 3, seed=2)
    assert other_path != path  # another seed: other splits, another file
    stored["folds"][0] = stored["folds"][0][1:]  # a case lost
    path.write_text(json.dumps(stored))
    with pytest.raises(BrainbenchDataError, match="do not list the 11 cases in 3 folds"):
        CrossValidationSplits.stored(tmp_path, CASES, 0.2, 3, seed=1)


@pytest.mark.parametrize("cases, folds, fold, message", [
    (CASES, 1, 0, "folds must be at least 2"),
    (CASES[:4], 3, 0, "3-fold cross-validation needs at least 4 non-test subjects"),
    (CASES, 3, 3, "fold=3 is outside 0..2"),
])
def test_impossible_folds_are_one_line_config_errors(cases, folds, fold, message):
    with pytest.raises(BrainbenchConfigError, match=message):
        CrossValidationSplits.deal(cases, test_fraction=0.2, folds=folds, seed=0).split(fold)
