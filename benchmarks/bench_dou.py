"""Dou et al.'s microbleed cascade on the synthetic VALDO 2021 look-alike: stage 1 alone vs the cascade.

Usage: python benchmarks/bench_dou.py --workdir /tmp/bench_dou [--cases 12] [--epochs 8]
                                      [--widths paper|small] [--threads 2] [--reuse]
                                      [--thresholds 0.5 0.2 0.05] [--nms-radius R] [train overrides ...]

1. ``brainbench train challenge=valdo2021 model=dou_cascade challenge.adapter.modalities=[t2s]`` in
   ``--workdir`` (the real CLI, synthetic data at the edition's 1×1×2 mm, both phases: screening on
   16×16×10 patches, then discrimination on stage 1's mined hard negatives).
   ``--reuse``: evaluate the newest run already in ``--workdir`` instead of training.
2. The run's two phase checkpoints are loaded into the config's ``DouCascade`` and its held-out test
   cases are segmented with :func:`brainbench.inference.cascade.predict_cascade`: stage 1 alone
   (every candidate accepted, ``stage2=False``) and the cascade at each stage-2 threshold of
   ``--thresholds`` (0.5 is the config's default, the softmax argmax; the paper's is unknown);
   ``--nms-radius`` replaces the trained config's candidate merge radius (voxels) at test time.
3. Counts pooled over the test cases with the valdo-2021-task2 hit rule (26-connected components,
   centres of mass within ``MICROBLEED_HIT`` voxels): sensitivity = ΣTP / ΣCMB (Dou's S), false
   positives per subject = ΣFP / cases (Dou's FP_avg), precision, and stage 1's candidate recall
   (CMBs with a stage-1 candidate within the miner's hit distance, before painting).

Synthetic data: these numbers say whether the cascade does what the paper says stage 2 is for (fewer
false positives at the same sensitivity), not how it would score on VALDO or Dou's private data.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from brainbench.evaluation.lesions import microbleed_detection
from brainbench.evaluation.protocols import PROTOCOLS
from brainbench.inference.cascade import predict_cascade
from brainbench.models.dou import find_candidates, lesion_centres, screening_scores
from brainbench.pipeline import build_parts, prepare_datamodule

SMALL = ["model.net.screening.maps=[16,16,16,32]", "model.net.discrimination.maps=[16,32]",
         "model.net.discrimination.hidden=[128,32]"]


def newest_run(workdir: Path) -> Path:
    """The newest run folder under ``workdir`` (holding config.yaml and checkpoints/)."""
    return max((workdir / "runs").rglob("config.yaml"), key=lambda path: path.stat().st_mtime).parent


def train(workdir: Path, cases: int, epochs: int, widths: str, extra: list[str]) -> Path:
    """Run ``brainbench train`` in ``workdir``; return its run folder."""
    overrides = ["challenge=valdo2021", "model=dou_cascade", "challenge.adapter.modalities=[t2s]",
                 f"data.synth.n_cases={cases}", f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
                 *(SMALL if widths == "small" else []), *extra]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "brainbench.cli", "train", *overrides], cwd=workdir, check=True)
    print(f"trained in {(time.perf_counter() - started) / 60:.1f} min: brainbench train {' '.join(overrides)}",
          file=sys.stderr)
    return newest_run(workdir)


def load_cascade(run: Path):
    """The run's config and its ``DouCascade`` with both phases' last weights."""
    cfg = OmegaConf.load(run / "config.yaml")
    net = instantiate(cfg.model.net, in_channels=1, n_classes=2)
    for stage in ("screening", "discrimination"):
        state = torch.load(run / "checkpoints" / stage / "last.ckpt", map_location="cpu", weights_only=False)
        getattr(net, stage).load_state_dict({k.removeprefix("net."): v for k, v in state["state_dict"].items()
                                             if k.startswith("net.")})
    return cfg, net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--widths", choices=("paper", "small"), default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="evaluate the newest run in --workdir, no training")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.2, 0.05])
    parser.add_argument("--nms-radius", type=float, default=None)
    args, extra = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    run = newest_run(args.workdir) if args.reuse else \
        train(args.workdir.resolve(), args.cases, args.epochs, args.widths, extra)
    cfg, net = load_cascade(run)
    if args.nms_radius is not None:
        net.nms_radius = args.nms_radius
    cfg.data.root = str((args.workdir / cfg.data.root).resolve()) if not Path(cfg.data.root).is_absolute() \
        else cfg.data.root
    cfg.data.cache_dir = str((args.workdir / cfg.data.cache_dir).resolve()) \
        if not Path(cfg.data.cache_dir).is_absolute() else cfg.data.cache_dir
    datamodule, _, source = prepare_datamodule(cfg, build_parts(cfg))
    rule = PROTOCOLS["valdo-2021-task2"].centre_hit
    hit_distance = cfg.model.phases.discrimination.sampler.hit_distance
    settings = [("stage 1 alone", False, net.stage2_threshold),
                *((f"cascade, stage-2 threshold {t:g}", True, t) for t in args.thresholds)]
    totals = {name: np.zeros(3) for name, _, _ in settings}  # TP, FP, #CMB
    found_by_screening = n_cmb = 0
    for case, pre in datamodule.test_cases():
        reference = np.asarray(pre.label) > 0
        centres = lesion_centres(reference)
        n_cmb += len(centres)
        scores = screening_scores(net.screening, pre.image)
        candidates, _ = find_candidates(scores, net.screening_threshold, net.nms_radius)
        if len(centres) and len(candidates):
            distances = np.linalg.norm(centres[:, None, :] - candidates[None, :, :], axis=-1)
            found_by_screening += int((distances.min(axis=1) <= hit_distance).sum())
        for name, stage2, threshold in settings:
            net.stage2_threshold = threshold
            prediction = predict_cascade(net, pre.image, stage2=stage2).argmax(0) > 0
            counts = microbleed_detection(prediction, reference, pre.array_grid.spacing if pre.array_grid else
                                          pre.grid.spacing, rule, if_both_empty=1.0)
            tp = counts["lesion_tpr"] * len(centres) if len(centres) else 0.0
            totals[name] += [tp, counts["lesion_false_positives"], len(centres)]
    n_cases = len(datamodule.test_cases())
    print(f"\n{n_cases} held-out {source} cases, {n_cmb} CMBs; stage-1 candidate recall "
          f"{found_by_screening}/{n_cmb} = {found_by_screening / max(1, n_cmb):.1%} "
          f"(within {hit_distance:g} voxels, threshold {net.screening_threshold}, NMS {net.nms_radius:g} voxels)\n")
    print("| prediction | sensitivity (ΣTP/ΣCMB) | false positives per subject | precision |")
    print("|---|---|---|---|")
    for name, (tp, fp, cmb) in totals.items():
        precision = tp / (tp + fp) if tp + fp else float("nan")
        print(f"| {name} | {tp:.0f}/{cmb:.0f} = {tp / max(1, cmb):.1%} | {fp / n_cases:.2f} | {precision:.1%} |")


if __name__ == "__main__":
    main()
