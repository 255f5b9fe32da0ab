"""Content-hashed cache of preprocessed cases as memory-mapped ``.npy`` arrays.

The key hashes the bytes of every input file of a case, the edition's label encoding and the
preprocessor's config, so a renamed copy of a dataset hits the cache and any change of data or
config misses it. A second run never parses NIfTI: it maps the arrays read-only.

Entry layout: ``<cache_dir>/<case_id>-<key[:16]>/{image.npy, label.npy, brain.npy, meta.json}``,
written to a temporary folder and renamed, so an interrupted run leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainbench.challenges.base import Case, ChallengeAdapter
from brainbench.data.io import Grid, load_label, load_volume

CACHE_FORMAT = 1
"""Bump when the entry layout changes so old entries are not misread."""


@dataclass(frozen=True)
class PreprocessedCase:
    """A cached case: arrays are read-only memory maps.

    Attributes:
        image: (C, X, Y, Z) float32, normalised.
        label: (X, Y, Z) int8 class indices ``0..n_classes-1`` (see ``Edition.encode_labels``),
            or ``None`` for unlabelled cases.
        brain: (X, Y, Z) bool brain mask.
        grid: the case's voxel grid (predictions are written back on it).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    brain: np.ndarray
    grid: Grid
    meta: dict


class PreprocessedCache:
    """Preprocess cases once, then serve them from memory-mapped arrays.

    Args:
        cache_dir: folder for entries (created on demand).
        preprocessor: callable ``images (C,X,Y,Z) → (images, brain mask)`` with a ``config()`` dict.
    """

    def __init__(self, cache_dir: str | Path, preprocessor):
        self.cache_dir = Path(cache_dir)
        self.preprocessor = preprocessor

    def key(self, case: Case, adapter: ChallengeAdapter) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps(
            {
                "format": CACHE_FORMAT,
                "preprocess": self.preprocessor.config(),
                "modalities": list(case.images),
                "labels": list(adapter.edition.label_values),
            },
            sort_keys=True,
        ).encode())
        for path in case.files:
            digest.update(_file_digest(path))
        return digest.hexdigest()

    def entry_dir(self, case: Case, adapter: ChallengeAdapter) -> Path:
        return self.cache_dir / f"{case.case_id}-{self.key(case, adapter)[:16]}"

    def load(self, case: Case, adapter: ChallengeAdapter) -> PreprocessedCase:
        """The cached case, preprocessing and writing the entry first if it is missing."""
        entry = self.entry_dir(case, adapter)
        if not (entry / "meta.json").is_file():
            self._build(case, adapter, entry)
        return _read_entry(entry)

    def _build(self, case: Case, adapter: ChallengeAdapter, entry: Path) -> None:
        grid = adapter.validate(case, check_label_values=False)
        channels = np.stack([load_volume(path)[0] for path in case.images.values()])
        image, brain = self.preprocessor(channels)
        meta = {
            "case_id": case.case_id,
            "shape": list(grid.shape),
            "affine": grid.affine.tolist(),
            "modalities": list(case.images),
            "meta": dict(case.meta),
            "has_label": case.label is not None,
        }
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            np.save(tmp / "image.npy", image)
            np.save(tmp / "brain.npy", brain)
            if case.label is not None:
                label, _ = load_label(case.label, allowed=set(adapter.edition.label_values))
                np.save(tmp / "label.npy", adapter.edition.encode_labels(label).astype(np.int8))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.replace(tmp, entry)
            except OSError:  # another process built the same entry first
                if not (entry / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _read_entry(entry: Path) -> PreprocessedCase:
    meta = json.loads((entry / "meta.json").read_text())
    label_path = entry / "label.npy"
    return PreprocessedCase(
        case_id=meta["case_id"],
        image=np.load(entry / "image.npy", mmap_mode="r"),
        label=np.load(label_path, mmap_mode="r") if label_path.is_file() else None,
        brain=np.load(entry / "brain.npy", mmap_mode="r"),
        grid=Grid(shape=tuple(meta["shape"]), affine=np.asarray(meta["affine"])),
        meta=meta,
    )


def _file_digest(path: Path, chunk: int = 1 << 20) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.digest()
