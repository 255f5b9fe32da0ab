"""Lightning data module: seeded case split (or k-fold cross-validation), cached cases, segment datasets.

Segments are cut on the fly from the memory-mapped cache; nothing is materialised on disk.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from brainbench.challenges.base import Case, ChallengeAdapter
from brainbench.data.cache import PreprocessedCache, PreprocessedCase
from brainbench.data.sampling import CentreSampler
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError
from brainbench.io import write_atomic


@dataclass(frozen=True)
class CaseSplit:
    """Case ids of each subset; a seed and fractions fix it (never shuffled by training seeds)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @classmethod
    def from_fractions(cls, case_ids: list[str], val_fraction: float, test_fraction: float, seed: int,
                       subjects: Mapping[str, str] | None = None) -> CaseSplit:
        """Shuffle subjects with ``seed`` and cut off at least one val and one test subject.

        ``subjects`` maps a case id to its subject (e.g. the time points of one ISBI 2015 patient), so
        that every case of a subject lands in the same subset; by default each case is its own subject.
        """
        subject_of, order, n_test = _shuffled_subjects(case_ids, test_fraction, seed, subjects)
        n_val = max(1, math.floor(val_fraction * len(order) + 0.5))
        if n_test + n_val >= len(order):
            raise BrainbenchConfigError(
                f"split fractions val={val_fraction} test={test_fraction} leave no training subject of {len(order)}"
            )
        return cls(train=_cases_of(subject_of, order[n_test + n_val :]),
                   val=_cases_of(subject_of, order[n_test : n_test + n_val]), test=_cases_of(subject_of, order[:n_test]))


@dataclass(frozen=True)
class CrossValidationSplits:
    """A fixed held-out test set and ``k`` validation folds over the remaining subjects.

    The test set is the one :meth:`CaseSplit.from_fractions` holds out for the same seed and test
    fraction, so switching cross-validation on never moves a case between test and training. The
    other subjects, in the same seeded order, are dealt to the folds in turn (fold sizes differ by at
    most one subject); fold ``i`` validates the model trained on the other ``k − 1`` folds.
    """

    test: tuple[str, ...]
    folds: tuple[tuple[str, ...], ...]

    @classmethod
    def deal(cls, case_ids: list[str], test_fraction: float, folds: int, seed: int,
             subjects: Mapping[str, str] | None = None) -> CrossValidationSplits:
        check_fold(None, folds)
        subject_of, order, n_test = _shuffled_subjects(case_ids, test_fraction, seed, subjects)
        rest = order[n_test:]
        if len(rest) < folds + 1:
            raise BrainbenchConfigError(f"{folds}-fold cross-validation needs at least {folds + 1} non-test subjects "
                                        f"(each fold validates on one and trains on the others), found {len(rest)}")
        return cls(test=_cases_of(subject_of, order[:n_test]),
                   folds=tuple(_cases_of(subject_of, rest[i::folds]) for i in range(folds)))

    def split(self, fold: int) -> CaseSplit:
        """Train on every fold but ``fold``, validate on ``fold``, test on the held-out set."""
        check_fold(fold, len(self.folds))
        train = sorted(case for i, cases in enumerate(self.folds) if i != fold for case in cases)
        return CaseSplit(train=tuple(train), val=self.folds[fold], test=self.test)

    def to_json(self) -> dict:
        return {"test": list(self.test), "folds": [list(cases) for cases in self.folds]}

    @classmethod
    def stored(cls, folder: Path, case_ids: list[str], test_fraction: float, folds: int, seed: int,
               subjects: Mapping[str, str] | None = None) -> tuple[CrossValidationSplits, Path]:
        """The splits of this case list, seed, test fraction and ``k``, read from ``folder`` when a run
        stored them before (so every model of a sweep, and every re-run, sees the same folds — a user
        may also edit the file, as nnU-Net's ``splits_final.json``), dealt and stored otherwise.

        Returns the splits and their file.
        """
        key = {"cases": sorted(case_ids), "subjects": dict(sorted((subjects or {}).items())),
               "test_fraction": test_fraction, "folds": folds, "split_seed": seed}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(folder) / f"splits_{folds}fold_{digest}.json"
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
                splits = cls(test=tuple(stored["test"]), folds=tuple(tuple(f) for f in stored["folds"]))
            except (ValueError, KeyError, TypeError) as error:
                raise BrainbenchDataError(path, f"unreadable stored splits ({error}); delete it to deal them anew")
            listed = sorted([*splits.test, *(case for fold in splits.folds for case in fold)])
            if listed != sorted(case_ids) or len(splits.folds) != folds:
                raise BrainbenchDataError(path, f"stored splits do not list the {len(case_ids)} cases in {folds} folds")
            return splits, path
        splits = cls.deal(case_ids, test_fraction, folds, seed, subjects)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_text(json.dumps({**splits.to_json(), "key": key}, indent=1)))
        return splits, path


def check_fold(fold: int | None, folds: int) -> None:
    """``folds`` is an integer ≥ 2 and ``fold``, when given, one of them (one-line config errors, which the
    pipeline raises before any data work)."""
    if not isinstance(folds, int) or folds < 2:
        raise BrainbenchConfigError(f"data.datamodule.folds must be at least 2, got {folds!r}")
    if fold is not None and (not isinstance(fold, int) or not 0 <= fold < folds):
        raise BrainbenchConfigError(f"fold={fold!r} is outside 0..{folds - 1} (data.datamodule.folds={folds})")


def _shuffled_subjects(case_ids: list[str], test_fraction: float, seed: int, subjects: Mapping[str, str] | None
                       ) -> tuple[dict[str, str], list[str], int]:
    """Each case's subject, the subjects in the seed's order, and how many of them the test set takes."""
    subject_of = {case: (subjects or {}).get(case, case) for case in case_ids}
    order = [str(s) for s in np.random.default_rng(seed).permutation(sorted(set(subject_of.values())))]
    if len(order) < 3:
        raise BrainbenchConfigError(f"need at least 3 subjects for a train/val/test split, found {len(order)}")
    return subject_of, order, max(1, math.floor(test_fraction * len(order) + 0.5))


def _cases_of(subject_of: Mapping[str, str], chosen: list[str]) -> tuple[str, ...]:
    """Every case of the ``chosen`` subjects (all time points of a subject stay together)."""
    chosen = set(chosen)
    return tuple(sorted(case for case, subject in subject_of.items() if subject in chosen))


class SegmentDataset(Dataset):
    """``length`` segments per epoch; segment ``i`` of epoch ``e`` depends only on (seed, e, i).

    Each item is ``(inputs, target)``: the model's input tensors and its int64 target, cut by
    ``extractor`` (see :mod:`brainbench.data.sampling`) around a case and centre drawn by
    ``sampler``, with the extractor's augmentation when ``augment`` is true.
    """

    def __init__(self, cases: list[PreprocessedCase], sampler: CentreSampler, extractor: Callable,
                 length: int, seed: int, augment: bool = True):
        self.cases, self.sampler, self.extractor = cases, sampler, extractor
        self.length, self.seed, self.augment = length, seed, augment
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case, centre = self.sampler.draw(self.cases, rng)
        inputs, target = self.extractor(case.image, case.label, centre, rng, augment=self.augment)
        return (tuple(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in inputs),
                torch.from_numpy(np.array(target, dtype=np.int64)))  # np.array keeps 0-d patch targets 0-d


class BrainSegmentationDataModule(pl.LightningDataModule):
    """Discovers a challenge folder, splits it by case and serves cached segments.

    Args:
        adapter: the edition's adapter (finds and validates cases).
        cache: preprocessed-case cache.
        root: the challenge data folder as released.
        sampler: draws training segment centres (and validation ones unless ``val_sampler`` is set).
        extractor: cuts the model's inputs and target around a centre (``model.segments``), for
            training and validation alike.
        val_sampler: draws validation centres whatever a training phase samples; ``None``: the
            training sampler, phase by phase. DeepMedic's reference samples validation segments
            uniformly over the brain (``BrainUniformSampler``, spec §3.5).
        val_augment: apply the extractor's augmentation (flips, rotations) to validation segments;
            the DeepMedic reference does not.
        batch_size: segments per optimisation step (DeepMedic: 10).
        segments_per_epoch / val_segments: segments drawn per training / validation epoch.
        val_fraction / test_fraction / split_seed: the case split.
        fold / folds / splits_dir: ``fold`` ``None``: validate on ``val_fraction`` of the cases;
            ``0 ≤ fold < folds``: k-fold cross-validation over the non-test cases
            (:class:`CrossValidationSplits`, stored in ``splits_dir`` and reused), same test set.
        seed: the run seed (segment sampling).
        num_workers / pin_memory: the DataLoaders' (``brainbench.pipeline.loader_settings`` picks them
            from the training device when ``data.datamodule.num_workers`` is ``auto``).
    """

    def __init__(self, adapter: ChallengeAdapter, cache: PreprocessedCache, root: str | Path,
                 sampler: CentreSampler, extractor: Callable, val_sampler: CentreSampler | None = None,
                 val_augment: bool = True, batch_size: int = 10, segments_per_epoch: int = 1000,
                 val_segments: int = 200, val_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0,
                 fold: int | None = None, folds: int = 5, splits_dir: str | Path | None = None,
                 seed: int = 0, num_workers: int = 0, pin_memory: bool = False):
        super().__init__()
        self.adapter, self.cache, self.root = adapter, cache, Path(root)
        self.sampler, self.extractor, self.batch_size = sampler, extractor, batch_size
        self.val_sampler, self.val_augment = val_sampler, val_augment
        self.segments_per_epoch, self.val_segments = segments_per_epoch, val_segments
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.fold, self.folds = fold, folds
        self.splits_dir = Path(splits_dir) if splits_dir is not None else Path(cache.cache_dir) / "splits"
        self.splits_file: Path | None = None
        self.seed, self.num_workers, self.pin_memory = seed, num_workers, pin_memory
        self.cases: dict[str, Case] = {}
        self.preprocessed: dict[str, PreprocessedCase] = {}
        self.split: CaseSplit | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        self.cases = {case.case_id: case for case in self.adapter.discover(self.root)}
        subjects = {cid: case.meta["subject"] for cid, case in self.cases.items() if "subject" in case.meta}
        if self.fold is None:
            self.split = CaseSplit.from_fractions(list(self.cases), self.val_fraction, self.test_fraction,
                                                  self.split_seed, subjects)
        else:
            splits, self.splits_file = CrossValidationSplits.stored(self.splits_dir, list(self.cases),
                                                                    self.test_fraction, self.folds, self.split_seed,
                                                                    subjects)
            self.split = splits.split(self.fold)
        self.cache.fit([self.cases[i] for i in self.split.train], self.adapter)  # learning stages see train only
        self.preprocessed = self.cache.load_all(self.cases.values(), self.adapter)
        self.train_set = self._segments(self.split.train, self.segments_per_epoch, self.seed, augment=True)
        self.val_set = self._segments(self.split.val, self.val_segments, self.seed + 10_000, augment=self.val_augment)
        self.use(self.sampler, self.extractor)

    def _segments(self, ids, length, seed, augment) -> SegmentDataset:
        return SegmentDataset([self.preprocessed[i] for i in ids], self.sampler, self.extractor, length, seed, augment)

    def use(self, sampler: CentreSampler, extractor: Callable) -> None:
        """Cut training and validation segments with ``extractor``, centred by ``sampler``, except
        that a configured ``val_sampler`` keeps centring validation (a training phase's switch)."""
        self.train_set.sampler, self.val_set.sampler = sampler, self.val_sampler or sampler
        self.train_set.extractor = self.val_set.extractor = extractor

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh training segments each epoch (validation segments stay fixed)."""
        self.train_set.epoch = epoch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                        pin_memory=self.pin_memory)

    def test_cases(self) -> list[tuple[Case, PreprocessedCase]]:
        assert self.split is not None, "call setup() first"
        return [(self.cases[i], self.preprocessed[i]) for i in self.split.test]
