"""Score prediction files against reference files, case by case, under one challenge :class:`Protocol`.

Runs on files alone (no torch, no models), so that an organiser can score submitted folders. A bad
submitted file never stops the run: it becomes one line in ``problems`` and its case is scored as an
empty prediction, as the protocol prescribes for a missing one, or, under the ``official`` input policy,
as the edition's scorer read it when that scorer accepted the file. Problems with the *reference* folder
are the organiser's to fix and raise :class:`~brainbench.errors.BrainbenchDataError`.

Scale: ``workers > 1`` scores cases in a pool of processes started with ``spawn`` (forking a process
that has imported torch is unsafe; nnU-Net does the same), each reading its case's files and sending
back only the rows, in case order, so that memory stays flat and the output is exactly the serial one.
The workers import this module and what it imports (numpy, scipy, pandas, nibabel), never torch,
models, training or tracking; like any ``spawn`` pool they also import the caller's ``__main__`` module,
so a script calling this with workers must guard its entry point with ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import multiprocessing
import numbers
import pickle
import signal
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.arrayproxy import ArrayProxy

from brainbench.io import NIFTI_SUFFIXES, Grid, existing_dir, load_label, read_grid, strip_nifti_suffix, write_atomic
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError
from brainbench.progress import track
from brainbench.evaluation import surface
from brainbench.evaluation.lesions import anima_detection, brats2023_lesionwise, isles22_lesions, microbleed_detection
from brainbench.evaluation.overlap import (
    Confusion,
    absolute_volume_difference_ml,
    absolute_volume_difference_mm3,
    absolute_volume_difference_percent,
    dice,
    precision,
    sensitivity,
    specificity,
    volume_difference_ratio,
    volumetric_similarity,
)
from brainbench.evaluation.protocols import INPUT_POLICIES, STRICT_INPUT, Protocol, ScorerInput

METRIC_COLUMNS = ("case", "region", "metric", "value")
"""Long-format metrics table: one row per case, region and metric; units in ``protocols.METRIC_UNITS``."""

_EMPTY_SCORED = "scored as an empty prediction"


@dataclass
class FolderEvaluation:
    """Result of scoring a prediction folder: long-format ``metrics``, one ``problems`` line per fault or
    per case read differently from ``strict``, and the ``input_policy`` the files were read under."""

    metrics: pd.DataFrame
    problems: list[str]
    input_policy: str


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    regions: Mapping[str, Sequence[int]],
    protocol: Protocol,
) -> list[dict]:
    """Score one case: rows ``{"region", "metric", "value"}`` for every region and protocol metric.

    ``pred`` and ``ref`` are label maps on the same grid; ``spacing`` is the voxel size in mm;
    ``regions`` maps a region name to the label values it merges (e.g. ``{"TC": (1, 4)}``). Voxels whose
    reference label is in ``protocol.ignore_labels`` are background in both maps before any metric.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    if protocol.ignore_labels:
        ignored = _region_mask(ref, sorted(protocol.ignore_labels))
        pred = np.where(ignored, 0, pred)
        ref = np.where(ignored, 0, ref)
    outside = 0
    if not any(0 in labels for labels in regions.values()):
        pred, ref, outside = _foreground_crop(pred, ref)
    rows = []
    for region, labels in regions.items():
        pred_mask = _region_mask(pred, labels)
        ref_mask = _region_mask(ref, labels)
        counts = Confusion.from_masks(pred_mask, ref_mask, outside=outside)
        lesion_values = _lesion_metrics(pred_mask, ref_mask, spacing, protocol)
        for metric in protocol.metrics:
            if metric in lesion_values:
                value = lesion_values[metric]
            else:
                value = _metric(metric, pred_mask, ref_mask, counts, spacing, protocol)
            rows.append({"region": region, "metric": metric, "value": float(value)})
    return rows


def evaluate_folders(
    pred_dir: str | Path,
    references: Mapping[str, str | Path],
    regions: Mapping[str, Sequence[int]],
    protocol: Protocol,
    allowed_labels: set[int],
    *,
    workers: int = 1,
    progress: bool = True,
    input_policy: str = "official",
) -> FolderEvaluation:
    """Score every reference case against ``<pred_dir>/<case_id>.nii.gz`` (or ``.nii``).

    ``references`` maps a case id to its reference label map (``Edition.find_references`` finds them in
    a release as released). The voxel size is the header's (NIfTI pixdim) of the file the edition's
    scorer measures with (the reference unless ``protocol.scorer_input`` says otherwise). Rows are
    ordered by case id.

    Predictions are untrusted: each header is checked before any voxel is read (3D, at most
    ``MAX_VOXELS`` voxels, an integer or float voxel type, the reference grid). A prediction that is
    missing, duplicated (``x.nii`` beside ``x.nii.gz``), unreadable, fails a header check (shape or
    affine off by more than 1e-3 mm), holds NaNs or labels outside ``allowed_labels``, or is a symlink
    leaving ``pred_dir`` is reported in one line and scored as empty. Under ``input_policy="official"``
    (``protocols.INPUT_POLICIES``) an affine or voxel values that the edition's scorer accepts are read
    as it reads them instead, and the case is reported in one line. Files matching no reference are
    reported and ignored.

    ``workers``: processes scoring cases in parallel (1: in this process, no pool); the rows, problem
    lines and every value are the same for any number. ``progress``: a progress bar on stderr, cases
    done / total (:func:`brainbench.progress.track`: only on a terminal and when not quiet).

    Raises:
        BrainbenchDataError: the prediction folder is missing or holds no file named after a reference
            case, or a reference is unreadable or has disallowed labels.
    """
    return _evaluate([pred_dir], None, references, regions, protocol, allowed_labels, workers, progress,
                     input_policy)


def evaluate_submissions(
    submission_dirs: Sequence[str | Path],
    references: Mapping[str, str | Path],
    regions: Mapping[str, Sequence[int]],
    protocol: Protocol,
    allowed_labels: set[int],
    *,
    workers: int = 1,
    progress: bool = True,
    input_policy: str = "official",
) -> FolderEvaluation:
    """:func:`evaluate_folders` for each submission folder; ``team`` (the folder's name) leads each row.

    Rows and problem lines come team by team, in ``submission_dirs`` order. With ``workers > 1`` one pool
    scores every (team, case) pair; each reference is read once for all teams. A folder holding no file
    named after a reference case scores every case as empty.

    Raises:
        BrainbenchConfigError: no submission folder, or two share a name.
    """
    if not submission_dirs:
        raise BrainbenchConfigError("--submissions: no submission folders to score")
    teams = [Path(folder).resolve().name for folder in submission_dirs]
    repeated = sorted({team for team in teams if teams.count(team) > 1})
    if repeated:
        raise BrainbenchConfigError(f"--submissions: team names (folder names) must differ; repeated: {repeated}")
    return _evaluate(submission_dirs, teams, references, regions, protocol, allowed_labels, workers, progress,
                     input_policy)


def write_metrics_csv(frame: pd.DataFrame, path: str | Path, *, input_policy: str | None = None) -> Path:
    """Write the long-format metrics table (``[team,] case, region, metric, value``) atomically.

    ``input_policy``: recorded in a last ``input_policy`` column, so the file says how the predictions
    behind its values were read.
    """
    missing = [column for column in METRIC_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}")
    columns = ["team", *METRIC_COLUMNS] if "team" in frame.columns else list(METRIC_COLUMNS)
    if input_policy is not None:
        frame, columns = frame.assign(input_policy=input_policy), [*columns, "input_policy"]
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, columns=columns, index=False))


# -- scoring folders: one job per case, in this process or in a spawn pool ----------------------------

_CaseJob = tuple[str, Path, tuple[tuple[Path, tuple[Path, ...]], ...]]
"""``(case_id, reference path, ((prediction folder, candidate files), ...))``, one entry per team."""

_CaseResult = list[tuple[list[tuple[str, str, float]], list[str]]]
"""Per team: the case's ``(region, metric, value)`` rows and its problem lines."""


def _evaluate(
    folders: Sequence[str | Path],
    teams: list[str] | None,
    references: Mapping[str, str | Path],
    regions: Mapping[str, Sequence[int]],
    protocol: Protocol,
    allowed_labels: set[int],
    workers: int,
    progress: bool,
    input_policy: str,
) -> FolderEvaluation:
    """Score ``folders`` (one per team; ``teams`` None for the single-folder table without a team column)."""
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise BrainbenchConfigError(f"workers must be a whole number of at least 1, got {workers!r}")
    if input_policy not in INPUT_POLICIES:
        raise BrainbenchConfigError(f"input policy {input_policy!r}: expected one of {', '.join(INPUT_POLICIES)}")
    reading = protocol.scorer_input if input_policy == "official" else STRICT_INPUT
    workers = int(workers)
    roots = [existing_dir(folder) for folder in folders]
    if not references:
        raise BrainbenchConfigError("no reference label maps to score against")
    problems: list[list[str]] = [[] for _ in roots]
    predictions = [_find_predictions(root, team_problems) for root, team_problems in zip(roots, problems)]
    jobs: list[_CaseJob] = []
    for case_id, ref_path in sorted(references.items()):
        submissions = tuple((root, tuple(found.pop(case_id, []))) for root, found in zip(roots, predictions))
        jobs.append((case_id, Path(ref_path), submissions))
    if teams is None and not any(candidates for _, _, ((_, candidates),) in jobs):
        raise BrainbenchDataError(folders[0], _nothing_matched(jobs[0][0], predictions[0]))
    rows: list[list[tuple]] = [[] for _ in roots]
    scored = _scored(jobs, regions, protocol, allowed_labels, reading, workers)
    for job, result in zip(jobs, track(scored, "Scoring", total=len(jobs)) if progress else scored):
        for team_rows, team_problems, (case_rows, case_problems) in zip(rows, problems, result):
            team_rows.extend((job[0], *row) for row in case_rows)
            team_problems.extend(case_problems)
    for team_problems, found in zip(problems, predictions):
        for paths in found.values():
            team_problems.extend(f"{path}: matches no reference case; ignored" for path in paths)
    if teams is None:
        metrics = pd.DataFrame(rows[0], columns=list(METRIC_COLUMNS))
        return FolderEvaluation(metrics=metrics, problems=problems[0], input_policy=input_policy)
    metrics = pd.DataFrame(
        [(team, *row) for team, team_rows in zip(teams, rows) for row in team_rows], columns=["team", *METRIC_COLUMNS]
    )
    lines = [f"team {team}: {problem}" for team, team_problems in zip(teams, problems) for problem in team_problems]
    return FolderEvaluation(metrics=metrics, problems=lines, input_policy=input_policy)


def _nothing_matched(first_case: str, unmatched: Mapping[str, list[Path]]) -> str:
    """Why a prediction folder is refused as a whole: what its files should be called, and what they are."""
    found = [path.name for paths in unmatched.values() for path in paths]
    seen = f"found {len(found)} NIfTI file(s) named otherwise, e.g. {found[0]}" if found else "found no NIfTI file"
    return (f"no prediction matches a reference case: expected files named <case_id>.nii.gz, e.g. "
            f"{first_case}{NIFTI_SUFFIXES[0]}; {seen}")


def _score_job(
    job: _CaseJob, regions: Mapping[str, Sequence[int]], protocol: Protocol, allowed: set[int], reading: ScorerInput
) -> _CaseResult:
    """Read one reference and each team's prediction of it; score each against it, measured in the voxel
    size of the header ``reading.spacing_from`` names (the reference's for a missing prediction)."""
    case_id, ref_path, submissions = job
    ref, ref_grid = _read_labels(ref_path, allowed)
    ref_spacing = _header_spacing(ref_path, ref_grid)
    result = []
    for root, candidates in submissions:
        problems: list[str] = []
        read = _prediction_or_none(case_id, list(candidates), root, ref_grid, allowed, reading, problems)
        pred, pred_spacing = read if read is not None else (np.zeros_like(ref), ref_spacing)
        spacing = pred_spacing if reading.spacing_from == "prediction" else ref_spacing
        case_rows = evaluate_case(pred, ref, spacing, regions, protocol)
        result.append(([(row["region"], row["metric"], row["value"]) for row in case_rows], problems))
    return result


def _scored(
    jobs: list[_CaseJob],
    regions: Mapping[str, Sequence[int]],
    protocol: Protocol,
    allowed: set[int],
    reading: ScorerInput,
    workers: int,
) -> Iterator[_CaseResult]:
    """Each job's result, in job order: here, or streamed back from ``workers`` spawned processes."""
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            yield _score_job(job, regions, protocol, allowed, reading)
        return
    context = ({name: tuple(labels) for name, labels in regions.items()}, protocol, set(allowed), reading)
    processes = min(workers, len(jobs))
    chunksize = max(1, min(8, len(jobs) // (4 * processes)))
    with multiprocessing.get_context("spawn").Pool(processes, _start_worker, context) as pool:
        for result in pool.imap(_score_in_worker, jobs, chunksize=chunksize):
            if isinstance(result, _Raised):
                raise result.error()
            yield result


_WORKER_CONTEXT: tuple | None = None
"""``(regions, protocol, allowed labels, reading)`` in a worker process, sent once when it starts."""


def _start_worker(regions: dict[str, tuple[int, ...]], protocol: Protocol, allowed: set[int],
                  reading: ScorerInput) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = (regions, protocol, allowed, reading)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which terminates the pool


@dataclass(frozen=True)
class _Raised:
    """An exception raised in a worker, in a form sure to unpickle in the parent: an exception whose
    ``__init__`` does not take its ``args`` back (as :class:`BrainbenchDataError`) fails to unpickle
    in the pool's result thread, and the pool then waits forever."""

    path: Path | None = None
    problem: str = ""
    exception: BaseException | None = None

    def error(self) -> BaseException:
        return BrainbenchDataError(self.path, self.problem) if self.exception is None else self.exception


def _score_in_worker(job: _CaseJob) -> _CaseResult | _Raised:
    try:
        return _score_job(job, *_WORKER_CONTEXT)
    except BrainbenchDataError as error:
        return _Raised(path=error.path, problem=error.problem)
    except Exception as error:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            error = RuntimeError(f"{type(error).__name__}: {error}")
        return _Raised(exception=error)


# -- reading label maps ---------------------------------------------------------------------------------


def _read_labels(
    path: str | Path,
    allowed: set[int] | None,
    grid: Grid | None = None,
    image: nib.spatialimages.SpatialImage | None = None,
) -> tuple[np.ndarray, Grid]:
    """``load_label(path, allowed)``, several times faster on the integer NIfTI files labels come in.

    Same labels (in the file's integer type, e.g. uint8, rather than int16: every metric sees only
    masks), same errors: any file the fast path is not sure of - MetaImage/NRRD, float voxels, scaling,
    a value outside ``allowed`` or int16, a damaged or multi-member gzip stream, anything unexpected -
    is read by ``load_label`` itself, which raises exactly as before. ``grid`` (``read_grid(path)``)
    and ``image`` (``nib.load(path)``), when the caller has them already, spare reading the header again.
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        return load_label(path, allowed=allowed)
    if grid is None:
        grid = read_grid(path)  # the header checks (and errors) of load_label
    try:
        labels = _integer_voxels(path, grid, image)
        fast = labels is not None and _labels_within(labels, allowed)
    except Exception:  # whatever it is, load_label reports it as it always has
        fast = False
    return (labels, grid) if fast else load_label(path, allowed=allowed)


def _integer_voxels(path: Path, grid: Grid, image: nib.spatialimages.SpatialImage | None) -> np.ndarray | None:
    """The voxels of an unscaled integer NIfTI file as its own type, or None for any other file.

    ``.gz`` files (nibabel decides by the name too) are inflated by zlib straight into the array's
    buffer and only up to the last voxel, as nibabel reads them (it checks no CRC either); the rest of
    nibabel's gzip reader is what makes ``load_label`` slow. The array is read-only.
    """
    proxy = (image if image is not None else nib.load(str(path))).dataobj
    if not isinstance(proxy, ArrayProxy) or proxy.dtype.kind not in "iu" or (proxy.slope, proxy.inter) != (1, 0):
        return None
    if not path.name.endswith(".gz"):
        return np.array(np.asanyarray(proxy)).reshape(grid.shape)
    size = proxy.offset + int(np.prod(proxy.shape, dtype=np.int64)) * proxy.dtype.itemsize
    buffer = _inflate_gzip(path, size)
    if buffer is None:
        return None
    array = np.ndarray(proxy.shape, dtype=proxy.dtype, buffer=buffer, offset=proxy.offset, order=proxy.order)
    return array.reshape(grid.shape)


def _inflate_gzip(path: Path, size: int, chunk: int = 1 << 22) -> bytes | None:
    """The first ``size`` bytes of the gzip file ``path``, or None unless it is a sound gzip stream that long.

    Raw deflate after the gzip header: zlib's gzip mode would also compute the CRC-32 of the ~9 MB
    (a third of the time), which nibabel's reader never compares when it stops at the last voxel.
    """
    with open(path, "rb") as stream:
        pending = stream.read(chunk)
        start = _deflate_start(pending)
        if start is None:
            return None
        pending = pending[start:]
        inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        parts, produced = [], 0
        while produced < size:
            if not pending:
                pending = stream.read(chunk)
                if not pending:
                    return None
            try:
                part = inflater.decompress(pending, size - produced)
            except zlib.error:
                return None
            pending = inflater.unconsumed_tail
            parts.append(part)
            produced += len(part)
            if inflater.eof and produced < size:  # a short first member: leave it to nibabel
                return None
    return b"".join(parts)


def _deflate_start(head: bytes) -> int | None:
    """Where the deflate data begin in a gzip file starting with ``head`` (RFC 1952), or None."""
    if len(head) < 10 or head[:3] != b"\x1f\x8b\x08" or head[3] & 0xE0:
        return None
    flags, start = head[3], 10
    if flags & 4:  # FEXTRA
        if len(head) < start + 2:
            return None
        start += 2 + int.from_bytes(head[start : start + 2], "little")
    for flag in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            end = head.find(b"\0", start)
            if end < 0:
                return None
            start = end + 1
    if flags & 2:  # FHCRC
        start += 2
    return start if start < len(head) else None


def _labels_within(labels: np.ndarray, allowed: set[int] | None) -> bool:
    """Whether every value of ``labels`` is in ``allowed`` (when given) and in int16 range.

    Min and max, then one comparison per value between them that is not allowed: a few passes over
    the volume instead of ``np.unique``'s sort.
    """
    low, high = int(labels.min()), int(labels.max())
    if low < np.iinfo(np.int16).min or high > np.iinfo(np.int16).max:
        return False
    if allowed is None:
        return True
    if low not in allowed or high not in allowed:
        return False
    absent = [value for value in range(low + 1, high) if value not in allowed]
    if len(absent) > 16:
        return set(np.unique(labels).tolist()) <= set(allowed)
    return not any((labels == value).any() for value in absent)


_SURFACE_METRICS: dict[tuple[str, str], Callable[..., float]] = {
    ("medpy", "hd95"): partial(surface.hausdorff_distance, percentile=95.0),
    ("medpy", "hd"): partial(surface.hausdorff_distance, percentile=100.0),
    ("medpy", "assd"): surface.average_symmetric_surface_distance,
    ("surfel", "hd95"): partial(surface.robust_hausdorff, percentile=95.0),
    ("surfel", "hd"): partial(surface.robust_hausdorff, percentile=100.0),
    ("surfel", "assd"): surface.surfel_average_distance,
    ("kth-ranked", "hd95"): partial(surface.kth_ranked_hausdorff, percentile=95.0),
    ("kth-ranked", "hd"): partial(surface.kth_ranked_hausdorff, percentile=100.0),
    ("kth-ranked", "assd"): surface.average_symmetric_surface_distance,
    ("in-plane", "hd95"): surface.in_plane_hd95,
    ("covalic", "hd"): partial(surface.covalic_hausdorff, fraction=1.0),
    ("covalic", "assd"): surface.covalic_average_distance,
    ("itk-set", "hd"): surface.set_hausdorff,
}
"""(variant, metric) → function of ``(pred, ref, spacing, *, if_both_empty, if_one_empty)``; the keys
are ``protocols.SURFACE_VARIANTS``."""


def _metric(
    metric: str,
    pred: np.ndarray,
    ref: np.ndarray,
    counts: Confusion,
    spacing: tuple[float, float, float],
    protocol: Protocol,
) -> float:
    """One voxel or surface metric of one region, with the protocol's empty-mask values."""
    match metric:
        case "dice":
            return dice(counts, if_both_empty=protocol.dice_both_empty)
        case "sensitivity":
            return sensitivity(
                counts,
                if_both_empty=protocol.sensitivity_both_empty,
                if_ref_empty=protocol.sensitivity_ref_empty,
            )
        case "specificity":
            return specificity(counts, if_no_negatives=protocol.specificity_no_negatives)
        case "ppv":
            return precision(counts, if_both_empty=protocol.ppv_both_empty, if_pred_empty=protocol.ppv_pred_empty)
        case "avd":
            return absolute_volume_difference_percent(counts, if_ref_empty=protocol.volume_ref_empty)
        case "vdr":
            return volume_difference_ratio(counts, if_ref_empty=protocol.volume_ref_empty)
        case "volume_difference_ml":
            return absolute_volume_difference_ml(counts, voxel_volume_mm3=float(np.prod(spacing)))
        case "volume_difference_mm3":
            return absolute_volume_difference_mm3(counts, voxel_volume_mm3=float(np.prod(spacing)))
        case "volumetric_similarity":
            return volumetric_similarity(counts, if_both_empty=protocol.vs_both_empty)
        case "hd95" | "hd" | "assd":
            function = _SURFACE_METRICS[protocol.surface_variant, metric]
            return function(
                pred, ref, spacing, if_both_empty=protocol.hd_both_empty, if_one_empty=protocol.hd_one_empty
            )
    raise ValueError(f"no implementation for metric {metric!r}")


def _lesion_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], protocol: Protocol
) -> dict[str, float]:
    """All lesion-wise metrics of the protocol's matching rule for one region (one component analysis)."""
    if not any(metric.startswith("lesion_") for metric in protocol.metrics):
        return {}
    match protocol.lesion_rule:
        case "anima":
            return anima_detection(pred, ref, spacing, protocol.anima)
        case "isles22":
            return isles22_lesions(pred, ref, if_both_empty=protocol.lesion_both_empty)
        case "brats2023":
            return brats2023_lesionwise(pred, ref, spacing, protocol.brats_lesions)
        case "centre-hit":
            return microbleed_detection(pred, ref, spacing, protocol.centre_hit,
                                        if_both_empty=protocol.lesion_both_empty)
    raise ValueError(f"no implementation for lesion rule {protocol.lesion_rule!r}")


def _foreground_crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Both label maps cut to the box of their labelled voxels plus one voxel, and the voxel count left out.

    Exact for every metric when no region holds label 0: every region voxel is inside, the one-voxel
    background margin keeps each boundary and erosion as on the full grid (see ``surface``), lesion
    dilations merge inside the box as outside it, and the voxels left out are true negatives.
    """
    labelled_pred, labelled_ref = pred != 0, ref != 0
    if not labelled_pred.any() and not labelled_ref.any():
        return pred, ref, 0
    box = surface.union_box(labelled_pred, labelled_ref, margin=1)
    return pred[box], ref[box], pred.size - pred[box].size


def _region_mask(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Voxels holding any of ``values``, in the memory order of ``labels`` (nibabel gives Fortran order).

    A loop of ``==`` is several times faster than ``np.isin``; matching the memory order avoids a strided
    copy per label.
    """
    mask = np.zeros_like(labels, dtype=bool)
    for value in values:
        mask |= labels == value
    return mask


def _is_nifti(name: str) -> bool:
    return name.endswith(NIFTI_SUFFIXES)


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _find_predictions(root: Path, problems: list[str]) -> dict[str, list[Path]]:
    """Case id → prediction files at the top of ``root``; anything else is reported and ignored."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.iterdir()):
        if path.is_dir() or not _is_nifti(path.name):
            problems.append(f"{path}: not a NIfTI prediction file; ignored")
            continue
        found.setdefault(strip_nifti_suffix(path.name), []).append(path)
    return found


def _prediction_or_none(
    case_id: str,
    paths: list[Path],
    root: Path,
    ref_grid: Grid,
    allowed: set[int],
    reading: ScorerInput,
    problems: list[str],
) -> tuple[np.ndarray, tuple[float, float, float]] | None:
    """The case's prediction labels and header voxel size, or None (with one line in ``problems``) when
    it cannot be used; a prediction ``reading`` accepts where strict would not also gets one line."""
    if not paths:
        expected = root / f"{case_id}{NIFTI_SUFFIXES[0]}"
        problems.append(f"{expected}: no prediction for case {case_id}; {_EMPTY_SCORED}")
        return None
    if len(paths) > 1:
        names = ", ".join(str(p) for p in paths)
        problems.append(f"{names}: several predictions for case {case_id}; {_EMPTY_SCORED}")
        return None
    path = paths[0]
    departures: list[tuple[str, str]] = []  # (what strict refuses, what the scorer does instead)
    try:
        if not _inside(path, root):
            raise BrainbenchDataError(path, f"link resolves outside {root}")
        grid = read_grid(path)
        image = _check_voxel_type(path)
        if not grid.matches(ref_grid):
            if grid.shape != ref_grid.shape or reading.compares_affine:
                raise BrainbenchDataError(path, _grid_mismatch(grid, ref_grid))
            departures.append((_grid_mismatch(grid, ref_grid), "headers are not compared, voxels lie on the "
                                                                "reference grid"))
        pred = _labels_as_read(path, grid, image, allowed, reading, departures)
    except BrainbenchDataError as error:
        problems.append(f"{error}; {_EMPTY_SCORED}")
        return None
    except Exception as error:  # a submitted file must never stop the evaluation
        detail = " ".join(str(error).split())[:200]
        problems.append(f"{path}: cannot be read ({type(error).__name__}: {detail}); {_EMPTY_SCORED}")
        return None
    if departures:
        found, done = zip(*departures)
        problems.append(f"{path}: {'; '.join(found)}; scored as {reading.scorer} does: {'; '.join(done)}")
    return pred, _header_spacing(path, grid, image)


def _labels_as_read(
    path: Path,
    grid: Grid,
    image: nib.spatialimages.SpatialImage,
    allowed: set[int],
    reading: ScorerInput,
    departures: list[tuple[str, str]],
) -> np.ndarray:
    """The strict labels; voxel values strict refuses (NaN, non-integer, not ``allowed``) as ``reading``
    reads them when it reads them, adding a departure. A file whose voxels cannot be read is refused."""
    try:
        return _read_labels(path, allowed, grid=grid, image=image)[0]
    except BrainbenchDataError as refused:
        if reading.labels is None:
            raise
        try:
            values = np.asanyarray(image.dataobj).reshape(grid.shape)
        except Exception:
            raise refused from None
        departures.append((refused.problem, reading.labels.effect))
        return reading.labels.read(values, allowed)


def _header_spacing(
    path: Path, grid: Grid, image: nib.spatialimages.SpatialImage | None = None
) -> tuple[float, float, float]:
    """The voxel size (mm) a scorer reads: NIfTI pixdim (``get_zooms``, SimpleITK's spacing), else the grid's."""
    if not path.name.endswith(NIFTI_SUFFIXES):
        return grid.spacing
    header = (image if image is not None else nib.load(str(path))).header
    return tuple(float(zoom) for zoom in header.get_zooms()[:3])


def _check_voxel_type(path: Path) -> nib.spatialimages.SpatialImage:
    """Refuse header voxel types that cannot hold labels (RGB, complex, ...), before reading voxels.

    Returns the image (header only; its voxels are read on demand)."""
    image = nib.load(str(path))
    dtype = image.get_data_dtype()
    if dtype.kind not in "iuf":
        raise BrainbenchDataError(path, f"voxel type {dtype} in header; expected an integer or float type")
    return image


def _grid_mismatch(grid: Grid, ref_grid: Grid) -> str:
    if grid.shape != ref_grid.shape:
        return f"grid shape {grid.shape} differs from the reference {ref_grid.shape}"
    offset = float(np.abs(grid.affine - ref_grid.affine).max())
    return f"affine differs from the reference by up to {offset:.4g} mm"
