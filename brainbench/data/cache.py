"""Content-hashed cache of preprocessed cases as memory-mapped ``.npy`` arrays.

The key hashes the bytes of every input file of a case (channels, label, shipped brain mask), the
edition's label encoding and reference grid, and the pipeline's config — including what learning
stages learned — so a renamed copy of a dataset hits the cache and any change of data, config or
training split misses it. A second run never parses NIfTI: it maps the arrays read-only.

Layout under ``cache_dir``:

- ``<case_id>-<key[:16]>/{image.npy, label.npy, brain.npy, meta.json}``: final entries (label as
  class indices, see ``Edition.encode_labels``);
- ``stages/<case_id>-<key[:16]>/``: the output of each ``cached`` stage (same files, raw label
  values), keyed by the configs of the stages up to it, so changing a later stage reuses it;
- ``fitted/<key[:16]>.json``: what a learning stage learned from a training split.

Entries are written to a temporary folder and renamed, so an interrupted run leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from brainbench.challenges.base import Case, ChallengeAdapter
from brainbench.io import Grid, write_atomic
from brainbench.data.preprocess import CaseArrays, Pipeline, Stage, as_pipeline, load_case
from brainbench.data.registration import resample
from brainbench.progress import track

CACHE_FORMAT = 2
"""Bump when the entry layout changes so old entries are not misread."""


@dataclass(frozen=True)
class PreprocessedCase:
    """A cached case: arrays are read-only memory maps on ``array_grid``.

    Attributes:
        image: (C, X, Y, Z) float32, normalised.
        label: (X, Y, Z) int8 class indices ``0..n_classes-1`` (see ``Edition.encode_labels``),
            or ``None`` for unlabelled cases.
        brain: (X, Y, Z) bool brain mask.
        grid: the case's own voxel grid (its reference channel's); predictions are written back on it.
        array_grid: the grid of the arrays (differs from ``grid`` after resampling or registration).
        case_to_array: 4×4 RAS matrix mapping ``grid`` points (mm) to ``array_grid`` points.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    brain: np.ndarray
    grid: Grid
    meta: dict
    array_grid: Grid | None = None
    case_to_array: np.ndarray | None = None

    def to_case_grid(self, labels: np.ndarray) -> np.ndarray:
        """A label map (X, Y, Z) on ``array_grid`` carried onto the case's ``grid`` (nearest neighbour)."""
        if self.array_grid is None or (self.array_grid.matches(self.grid)
                                       and np.allclose(self.case_to_array, np.eye(4))):
            return labels
        return resample(labels, self.array_grid, self.grid, "nearest", self.case_to_array)


class PreprocessedCache:
    """Preprocess cases once, then serve them from memory-mapped arrays.

    Args:
        cache_dir: folder for entries (created on demand).
        preprocessor: a :class:`~brainbench.data.preprocess.Pipeline` or a single stage.
    """

    def __init__(self, cache_dir: str | Path, preprocessor: Pipeline | Stage):
        self.cache_dir = Path(cache_dir)
        self.preprocessor = as_pipeline(preprocessor)
        self._digests: dict[tuple, bytes] = {}

    def fit(self, cases: list[Case], adapter: ChallengeAdapter) -> None:
        """Fit the learning stages on ``cases`` (the training split), reusing earlier fits.

        A learning stage has ``fit(samples)`` and keeps what it learned in ``landmarks``; it sees the
        training cases after the stages before it.
        """
        stages = self.preprocessor.stages
        for index, stage in enumerate(stages):
            if not hasattr(stage, "fit"):
                continue
            unfitted = {k: v for k, v in stage.config().items() if k != "landmarks"}
            digest = hashlib.sha256(self._prefix_header(index, adapter) + json.dumps(unfitted, sort_keys=True).encode())
            for case in sorted(cases, key=lambda c: c.case_id):
                digest.update(self._case_digest(case))
            state_file = self.cache_dir / "fitted" / f"{digest.hexdigest()[:16]}.json"
            if state_file.is_file():
                stage.landmarks = json.loads(state_file.read_text())
                continue
            stage.fit(self._run(case, adapter, index) for case in track(cases, f"Fitting {type(stage).__name__}"))
            write_atomic(state_file, lambda tmp: tmp.write_text(json.dumps(stage.landmarks)))

    def key(self, case: Case, adapter: ChallengeAdapter) -> str:
        return self._prefix_key(case, adapter, len(self.preprocessor.stages))

    def entry_dir(self, case: Case, adapter: ChallengeAdapter) -> Path:
        return self.cache_dir / f"{case.case_id}-{self.key(case, adapter)[:16]}"

    def load(self, case: Case, adapter: ChallengeAdapter) -> PreprocessedCase:
        """The cached case, preprocessing and writing the entry first if it is missing."""
        entry = self.entry_dir(case, adapter)
        if not (entry / "meta.json").is_file():
            arrays = self._run(case, adapter, len(self.preprocessor.stages))
            if arrays.label is not None:
                arrays = replace(arrays, label=adapter.edition.encode_labels(arrays.label).astype(np.int8))
            case_grid = arrays.case_grid or arrays.grid
            _write_entry(entry, replace(arrays, brain=arrays.brain_or_nonzero()), {
                "case_id": case.case_id,
                "shape": list(case_grid.shape),
                "affine": case_grid.affine.tolist(),
                "meta": dict(case.meta),
                "has_label": case.label is not None,
            })
        return _read_entry(entry)

    def load_all(self, cases: Iterable[Case], adapter: ChallengeAdapter) -> dict[str, PreprocessedCase]:
        """:meth:`load` every case, by case id, with a progress bar: preprocessing is the slow step of a
        first run."""
        return {case.case_id: self.load(case, adapter) for case in track(list(cases), "Preprocessing")}

    def _run(self, case: Case, adapter: ChallengeAdapter, stop: int) -> CaseArrays:
        """The case after ``stages[:stop]``, starting from the latest cached stage output."""
        stages = self.preprocessor.stages
        start, arrays = 0, None
        for index in range(stop, 0, -1):
            folder = self._stage_dir(case, adapter, index)
            if stages[index - 1].cached and (folder / "meta.json").is_file():
                start, arrays = index, _read_arrays(folder)
                break
        if arrays is None:
            arrays = load_case(case, adapter)
        for index in range(start, stop):
            arrays = stages[index](arrays)
            if stages[index].cached:
                _write_entry(self._stage_dir(case, adapter, index + 1), arrays, {"case_id": case.case_id})
        return arrays

    def _stage_dir(self, case: Case, adapter: ChallengeAdapter, stop: int) -> Path:
        return self.cache_dir / "stages" / f"{case.case_id}-{self._prefix_key(case, adapter, stop)[:16]}"

    def _prefix_header(self, stop: int, adapter: ChallengeAdapter) -> bytes:
        return json.dumps(
            {
                "format": CACHE_FORMAT,
                "stages": [stage.config() for stage in self.preprocessor.stages[:stop]],
                "labels": list(adapter.edition.label_values),
                "reference_grid": adapter.edition.reference_grid,
            },
            sort_keys=True,
        ).encode()

    def _prefix_key(self, case: Case, adapter: ChallengeAdapter, stop: int) -> str:
        """Hash of the case's files and the configs of ``stages[:stop]``."""
        return hashlib.sha256(self._prefix_header(stop, adapter) + self._case_digest(case)).hexdigest()

    def _case_digest(self, case: Case) -> bytes:
        """Digest of the case's channel names and file bytes (memoised on path, size and mtime)."""
        mask = case.meta.get("brain_mask")
        files = [*case.files, *([Path(mask)] if mask else [])]
        signature = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        if signature not in self._digests:
            digest = hashlib.sha256(json.dumps(list(case.images)).encode())
            for path in files:
                digest.update(_file_digest(path))
            self._digests[signature] = digest.digest()
        return self._digests[signature]


def _write_entry(entry: Path, arrays: CaseArrays, meta: dict) -> None:
    """Write ``arrays`` and ``meta`` as one entry folder, atomically (a concurrent writer may win)."""
    meta = {**meta, "modalities": list(arrays.modalities), "array_shape": list(arrays.grid.shape),
            "array_affine": arrays.grid.affine.tolist(), "case_to_array": np.asarray(arrays.case_to_array).tolist()}
    if arrays.case_grid is not None:
        meta.update(case_shape=list(arrays.case_grid.shape), case_affine=arrays.case_grid.affine.tolist())
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "image.npy", arrays.images.astype(np.float32, copy=False))
        if arrays.brain is not None:
            np.save(tmp / "brain.npy", arrays.brain)
        if arrays.label is not None:
            np.save(tmp / "label.npy", arrays.label)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, entry)
        except OSError:  # another process built the same entry first
            if not (entry / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_arrays(entry: Path) -> CaseArrays:
    meta = json.loads((entry / "meta.json").read_text())

    def optional(name):
        return np.load(entry / name, mmap_mode="r") if (entry / name).is_file() else None

    return CaseArrays(images=np.load(entry / "image.npy", mmap_mode="r"), modalities=tuple(meta["modalities"]),
                      grid=Grid(shape=tuple(meta["array_shape"]), affine=np.asarray(meta["array_affine"])),
                      brain=optional("brain.npy"), label=optional("label.npy"),
                      case_to_array=np.asarray(meta["case_to_array"]),
                      case_grid=Grid(shape=tuple(meta["case_shape"]), affine=np.asarray(meta["case_affine"]))
                      if "case_shape" in meta else None)


def _read_entry(entry: Path) -> PreprocessedCase:
    arrays = _read_arrays(entry)
    meta = json.loads((entry / "meta.json").read_text())
    return PreprocessedCase(
        case_id=meta["case_id"],
        image=arrays.images,
        label=arrays.label,
        brain=arrays.brain,
        grid=Grid(shape=tuple(meta["shape"]), affine=np.asarray(meta["affine"])),
        meta=meta,
        array_grid=arrays.grid,
        case_to_array=arrays.case_to_array,
    )


def _file_digest(path: Path, chunk: int = 1 << 20) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.digest()
