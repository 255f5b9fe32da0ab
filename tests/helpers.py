"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from brainbench.challenges import ChallengeAdapter

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def write_brats_case(root: Path, case_id: str, shape=(24, 24, 20), seed: int = 0, suffix: str = ".nii.gz",
                     modalities=("flair", "t1", "t1ce", "t2"), seg_name: str | None = None) -> Path:
    """A BraTS-2020-layout case: brain block of random intensities, a tumour with labels 1/2/4."""
    rng = np.random.default_rng(seed)
    folder = root / case_id
    brain = np.zeros(shape, bool)
    brain[3:-3, 3:-3, 3:-3] = True
    for modality in modalities:
        image = np.where(brain, rng.normal(100, 20, shape), 0).astype(np.float32)
        write_nifti(folder / f"{case_id}_{modality}{suffix}", image)
    seg = np.zeros(shape, np.uint8)
    c = np.array(shape) // 2
    seg[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 3 : c[2] + 3] = 2
    seg[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 4
    seg[c[0] - 1 : c[0] + 1, c[1] - 1 : c[1] + 1, c[2] - 1 : c[2] + 1] = 1
    write_nifti(folder / f"{seg_name or case_id + '_seg'}{suffix}", seg)
    return folder


TINY_DEEPMEDIC = [
    "model.net.feature_maps=[4,4,4,4,4,4,6,6]",
    "model.net.fc_feature_maps=[8,8]",
    "sampler.segments_per_epoch=20",
    "sampler.val_segments=10",
    "sampler.batch_size=5",
    "trainer.max_epochs=2",
    "data.datamodule.val_fraction=0.25",
    "data.datamodule.test_fraction=0.25",
]
"""Overrides for a DeepMedic small enough to train in seconds on CPU (any data source)."""

TINY = [*TINY_DEEPMEDIC, "data.synth.n_cases=4"]
"""The tiny DeepMedic on four synthetic cases."""


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``brainbench ARGS`` as a user runs it: a fresh Python process in ``cwd``, output captured."""
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "brainbench.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks, by hand."""
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def best_constant_labelling(edition: str, root: Path, case_id: str) -> tuple[float, int, list[str]]:
    """Mean Dice over the regions labelled in the case when every non-zero voxel of the first channel gets
    one label value, for the best such value; that value; those regions."""
    adapter = ChallengeAdapter(edition)
    (case,) = [c for c in adapter.discover(root) if c.case_id == case_id]
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))  # NIfTI or MetaImage (BRATS 2013)
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(next(iter(case.images.values()))))) != 0
    regions = {region: np.isin(reference, labels) for region, labels in adapter.edition.regions.items()}
    regions = {region: mask for region, mask in regions.items() if mask.any()}
    assert regions, "the held-out case has no labelled region"
    scores = {value: np.mean([dice(brain, mask) if value in adapter.edition.regions[region] else 0.0
                              for region, mask in regions.items()])
              for value in adapter.edition.label_values if value != 0}
    value = max(scores, key=scores.get)
    return scores[value], value, list(regions)


def held_out_dice_and_baseline(workdir: Path, edition: str) -> tuple[float, float, int]:
    """For the one run under ``workdir`` on one held-out synthetic case: its mean Dice over the case's
    labelled regions (from metrics.csv), the best constant labelling's, and that label value."""
    (metrics_csv,) = list((workdir / "runs").rglob("metrics.csv"))
    frame = pd.read_csv(metrics_csv).query("metric == 'dice'")
    (case_id,) = frame["case"].unique()
    (root,) = [p.parent for p in (workdir / "datasets").rglob("brainbench_synthetic.json")]
    baseline, value, regions = best_constant_labelling(edition, root, str(case_id))
    return float(frame.set_index("region").loc[regions, "value"].mean()), baseline, value


def calibrated_deepmedic(model, seed: int = 0):
    """Random BN affine, PReLU slopes and biases, with BN running statistics measured in train mode.

    Measured statistics keep activations at the scale of a trained network (logits of a few units);
    arbitrary ones let them grow layer by layer until float32 round-off alone exceeds the tolerance.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.momentum = None  # running statistics = mean over the calibration batches
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.25 * torch.rand(m.num_parameters, generator=gen))
        for block in (model.normal_pathway[0], model.subsampled_pathway[0]):
            block.norm.bias.copy_(0.2 * torch.randn(model.in_channels, generator=gen))
        model.class_bias.copy_(torch.randn(model.n_classes, generator=gen))
        model.train()(torch.randn(4, model.in_channels, 25, 25, 25, generator=gen),
                      torch.randn(4, model.in_channels, 19, 19, 19, generator=gen))
    return model.eval()


SWEEP = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=deepmedic,deepmedic_plus", "fold=0,1",
         *TINY, "data.datamodule.folds=2", "trainer.enable_progress_bar=false", "logger.experiment_name=sweep"]
"""4 jobs, 2 at a time, on 4 synthetic cases: 1 held-out test case, 3 cases dealt into 2 folds."""


def run_sweep(workdir: Path, tracking_uri: str) -> MlflowClient:
    """Launch :data:`SWEEP` against ``tracking_uri`` and return a client of that store."""
    result = run_cli("train", *SWEEP, f"logger.tracking_uri={tracking_uri}", cwd=workdir, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return MlflowClient(tracking_uri=tracking_uri)


def check_sweep_store(client: MlflowClient, workdir: Path) -> None:
    """One parent, 4 finished children with their fold, model, metrics and artifacts; the parent's
    aggregated leaderboard equals the mean ± SD computed here from the children's own metrics."""
    experiment = client.get_experiment_by_name("sweep")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("kind") == "sweep"]
    children = [run for run in runs if run.info.run_id != parent.info.run_id]
    assert len(children) == 4 and parent.info.status == "FINISHED"
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert sorted((r.data.tags["model"], r.data.tags["fold"]) for r in children) == [
        ("deepmedic", "0"), ("deepmedic", "1"), ("deepmedic_plus", "0"), ("deepmedic_plus", "1")]
    assert all(run.info.status == "FINISHED" and run.data.tags["folds"] == "2" for run in children)
    assert "model=deepmedic,deepmedic_plus" in parent.data.tags["sweep.overrides"]
    assert "joblib" in parent.data.tags["sweep.launcher"]
    for run in children:
        metrics = run.data.metrics
        for region in ("WT", "TC", "ET"):
            assert {f"{m}_{region}" for m in ("dice", "hd95")} <= set(metrics)
        assert metrics["n_test_cases"] == 1
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2  # both epochs, no loss
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "metrics.csv", "model", "hydra"} <= artifacts
        assert any(path.startswith("splits_2fold_") for path in artifacts)

    # every job read the same stored folds: the validation cases of fold 0 and fold 1 partition the 3 non-test cases
    (splits_file,) = list((workdir / "datasets" / ".cache" / "splits").glob("splits_2fold_*.json"))
    splits = json.loads(splits_file.read_text())
    assert len(splits["test"]) == 1 and sorted(len(f) for f in splits["folds"]) == [1, 2]
    assert not set(splits["test"]) & {case for fold in splits["folds"] for case in fold}

    board = pd.read_csv(client.download_artifacts(parent.info.run_id, "leaderboard/brats2020/leaderboard.csv",
                                                  str(workdir / "board")))
    assert len(board) == 2 and set(board["runs"]) == {2} and set(board["folds"].astype(str)) == {"0,1"}
    for _, row in board.iterrows():
        model = "deepmedic_plus" if "deepmedic_plus" in row["configuration"] else "deepmedic"
        values = pd.Series([r.data.metrics["dice_WT"] for r in children if r.data.tags["model"] == model])
        assert row["WT dice"] == f"{values.mean():.3f}±{values.std(ddof=1):.3f} (2)"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "leaderboard/brats2020")}
    assert "leaderboard/brats2020/cases_dice.png" in artifacts
    assert "leaderboard/brats2020/ranking" in artifacts  # two configurations: ranked on pooled per-case metrics


RESIDENT_PEAK_SCRIPT = """
import json, sys
import numpy as np, torch

def resident(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

torch.set_num_threads(1)
torch.manual_seed(0)
budget = int(sys.argv[1])
{setup}
run()  # first run: kernels, caches
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM, the peak resident size, to the current one
before = resident("VmRSS")
result = run()
peak = resident("VmHWM") - before
print(json.dumps({{"peak": peak, **report(result)}}))
"""


def resident_peak(setup: str, budget: int) -> dict:
    """Peak resident bytes of the second call of ``run()`` in a fresh Linux process, plus ``report(result)``.

    ``setup``: Python source that may read ``budget`` (bytes) and defines ``run()`` and ``report(result) ->
    dict``. glibc returns every freed block of 64 KiB or more at once there, so the resident peak is what
    the call held, measured from ``/proc/self/status`` after resetting it through ``/proc/self/clear_refs``.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", RESIDENT_PEAK_SCRIPT.format(setup=setup), str(budget)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


HEADLINE_PREFIXES = ("dice_", "hd95_", "sensitivity_", "specificity_")


def held_out_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A run's headline test metrics (``dice_WT``, …): what reruns and resumed runs must reproduce exactly."""
    return {key: value for key, value in metrics.items() if key.startswith(HEADLINE_PREFIXES)}


def summary_metric_keys(metrics: dict[str, float]) -> set[str]:
    """A run's metrics other than its training curves, learning rates and epoch counter."""
    return {key for key in metrics if not key.startswith(("train_", "val_", "lr-", "epoch"))}
