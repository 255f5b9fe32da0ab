"""Lightning data module: seeded case split, cached cases, segment datasets.

Segments are cut on the fly from the memory-mapped cache; nothing is materialised on disk.
"""

from __future__ import annotations

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
from brainbench.data.sampling import ForegroundBackgroundSampler
from brainbench.errors import BrainbenchConfigError


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
        subject_of = {case: (subjects or {}).get(case, case) for case in case_ids}
        order = [str(s) for s in np.random.default_rng(seed).permutation(sorted(set(subject_of.values())))]
        if len(order) < 3:
            raise BrainbenchConfigError(f"need at least 3 subjects for a train/val/test split, found {len(order)}")
        n_test = max(1, math.floor(test_fraction * len(order) + 0.5))
        n_val = max(1, math.floor(val_fraction * len(order) + 0.5))
        if n_test + n_val >= len(order):
            raise BrainbenchConfigError(
                f"split fractions val={val_fraction} test={test_fraction} leave no training subject of {len(order)}"
            )

        def cases_of(chosen: list[str]) -> tuple[str, ...]:
            return tuple(sorted(case for case, subject in subject_of.items() if subject in chosen))

        return cls(train=cases_of(order[n_test + n_val :]), val=cases_of(order[n_test : n_test + n_val]),
                   test=cases_of(order[:n_test]))


class SegmentDataset(Dataset):
    """``length`` training segments per epoch; segment ``i`` of epoch ``e`` depends only on (seed, e, i).

    Each item is ``(inputs, target)``: the model's input tensors and its int64 target, cut by
    ``extractor`` (see :mod:`brainbench.data.sampling`) around a centre drawn by ``sampler``.
    """

    def __init__(self, cases: list[PreprocessedCase], sampler: ForegroundBackgroundSampler, extractor: Callable,
                 length: int, seed: int):
        self.cases, self.sampler, self.extractor = cases, sampler, extractor
        self.length, self.seed = length, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case = self.cases[int(rng.integers(len(self.cases)))]
        centre = self.sampler.centre(case, rng)
        inputs, target = self.extractor(case.image, case.label, centre, rng)
        return (tuple(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in inputs),
                torch.from_numpy(np.array(target, dtype=np.int64)))  # np.array keeps 0-d patch targets 0-d


class BrainSegmentationDataModule(pl.LightningDataModule):
    """Discovers a challenge folder, splits it by case and serves cached segments.

    Args:
        adapter: the edition's adapter (finds and validates cases).
        cache: preprocessed-case cache.
        root: the challenge data folder as released.
        sampler: draws segment centres.
        extractor: cuts the model's inputs and target around a centre (``model.segments``);
            validation segments are cut the same way (augmentation included).
        batch_size: segments per optimisation step (DeepMedic: 10).
        segments_per_epoch / val_segments: segments drawn per training / validation epoch.
        val_fraction / test_fraction / split_seed: the case split.
        seed: the run seed (segment sampling).
    """

    def __init__(self, adapter: ChallengeAdapter, cache: PreprocessedCache, root: str | Path,
                 sampler: ForegroundBackgroundSampler, extractor: Callable, batch_size: int = 10,
                 segments_per_epoch: int = 1000, val_segments: int = 200, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, split_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.adapter, self.cache, self.root = adapter, cache, Path(root)
        self.sampler, self.extractor, self.batch_size = sampler, extractor, batch_size
        self.segments_per_epoch, self.val_segments = segments_per_epoch, val_segments
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.seed, self.num_workers = seed, num_workers
        self.cases: dict[str, Case] = {}
        self.preprocessed: dict[str, PreprocessedCase] = {}
        self.split: CaseSplit | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        self.cases = {case.case_id: case for case in self.adapter.discover(self.root)}
        subjects = {cid: case.meta["subject"] for cid, case in self.cases.items() if "subject" in case.meta}
        self.split = CaseSplit.from_fractions(list(self.cases), self.val_fraction, self.test_fraction,
                                              self.split_seed, subjects)
        self.cache.fit([self.cases[i] for i in self.split.train], self.adapter)  # learning stages see train only
        self.preprocessed = {cid: self.cache.load(case, self.adapter) for cid, case in self.cases.items()}
        self.train_set = self._segments(self.split.train, self.segments_per_epoch, self.seed)
        self.val_set = self._segments(self.split.val, self.val_segments, self.seed + 10_000)

    def _segments(self, ids, length, seed) -> SegmentDataset:
        return SegmentDataset([self.preprocessed[i] for i in ids], self.sampler, self.extractor, length, seed)

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh training segments each epoch (validation segments stay fixed)."""
        self.train_set.epoch = epoch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def test_cases(self) -> list[tuple[Case, PreprocessedCase]]:
        assert self.split is not None, "call setup() first"
        return [(self.cases[i], self.preprocessed[i]) for i in self.split.test]
