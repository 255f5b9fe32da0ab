"""Brosch et al. 2016 CEN with and without the shortcut, briefly trained on synthetic MSSEG 2016 cases.

Usage: python benchmarks/bench_brosch.py [--workdir DIR] [--steps 150] [--kernels 5 5] [--filters 16 16]
                                         [--r 0.05 0.5] [--optimizer config|adam]

Writes ``--cases`` MSSEG 2016 look-alike cases (``brainbench.data.synth``) at ``--spacing`` mm, holds
the last ``--test-cases`` out, and trains each variant for ``--steps`` steps with the
sensitivity–specificity objective on whole brain boxes (:class:`~brainbench.models.brosch.CroppedVolumes`,
one case per step, random flips), with the optimiser of ``conf/model/brosch_cen.yaml`` (Adadelta, lr 1,
as ``brainbench train model=brosch_cen``) or ``--optimizer adam`` (lr ``--lr``). The variants share the
seed, hence the initial weights of every shared layer, and the sequence of training cases. Each r of
``--r`` trains both variants (0.05: NiftyNet's default, spec §4.1). At r = 0.05 the background term can
drive every sigmoid output towards 0 (lesion voxels saturate first, after which the squared error on a
saturated sigmoid has almost no gradient): with Adam at lr 1e-3 both variants did, with Adadelta the CEN
without shortcut did (BENCHMARKS.md).

Each is evaluated with the MSSEG 2016 protocol (lesion Dice, LTPR, LPPV) on the held-out synthetic
cases and on the real MS case ``shared/data/real/ms_lesion_ljubljana_patient19`` (FLAIR, T1, T1POST,
T2 and the 3-rater consensus, 1 mm MNI 182×218×182). The real case has no DP channel, so every case is
read with the channels flair, t1, gado, t2. Its preprocessing is the training data's (z-score within
the brain) after resampling to the training spacing; the prediction is mapped back to 1 mm (nearest
neighbour) and scored there against the original mask. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from brainbench.challenges import ChallengeAdapter
from brainbench.config import compose
from brainbench.data.boxes import brain_box
from brainbench.data.cache import PreprocessedCache, PreprocessedCase
from brainbench.data.preprocess import Pipeline, ResampleSpacing, ZScoreInBrain
from brainbench.data.synth import synthesize
from brainbench.evaluation.evaluate import evaluate_case
from brainbench.evaluation.protocols import PROTOCOLS
from brainbench.inference.region import predict_in_brain_box
from brainbench.inference.whole import predict_whole_volume
from brainbench.io import load_label
from brainbench.models.brosch import BroschCEN, CroppedVolumes
from brainbench.training.losses import SensitivitySpecificity

REAL_CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ms_lesion_ljubljana_patient19"
REAL_FILES = {
    "FLAIR": "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "T1": "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "GADO": "T1POST_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "T2": "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
}
REAL_MASK = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
MODALITIES = ["flair", "t1", "gado", "t2"]
METRICS = ("dice", "lesion_tpr", "lesion_ppv")


def real_release(root: Path) -> Path:
    """The real case in the MSSEG 2016 release layout (links), as ``tests/challenges/test_real_cases.py``."""
    patient = root / "Center_01" / "Patient_01"
    (patient / "Preprocessed_Data").mkdir(parents=True, exist_ok=True)
    (patient / "Masks").mkdir(exist_ok=True)
    links = {patient / "Preprocessed_Data" / f"{c}_preprocessed.nii.gz": REAL_CASE / n for c, n in REAL_FILES.items()}
    links[patient / "Masks" / "Consensus.nii.gz"] = REAL_CASE / REAL_MASK
    for link, target in links.items():
        if not link.is_symlink():
            link.symlink_to(target)
    return root


def train(net: BroschCEN, cases: list[PreprocessedCase], steps: int, r: float, optimiser: torch.optim.Optimizer,
          seed: int) -> float:
    """``steps`` whole-brain-box steps; returns the mean loss of the last 10."""
    rng = np.random.default_rng(seed)
    extract = CroppedVolumes(size=None, flip_probability=0.5)
    loss_fn = SensitivitySpecificity(2, r=r)
    net.train()
    losses = []
    for _ in range(steps):
        case = cases[rng.integers(len(cases))]
        (image,), target = extract(case.image, case.label, (0, 0, 0), rng)
        loss = loss_fn(net(torch.from_numpy(image)[None]), torch.from_numpy(target)[None])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return float(np.mean(losses[-10:]))


def score(net: BroschCEN, adapter: ChallengeAdapter, cases, cache: PreprocessedCache) -> dict[str, float]:
    """Mean of each metric over ``cases``, scored on each case's own grid against its reference."""
    protocol = PROTOCOLS[adapter.edition.protocol]
    rows = []
    for case in cases:
        pre = cache.load(case, adapter)
        probabilities = predict_in_brain_box(predict_whole_volume, net, pre.image, adapter.edition.n_classes)
        prediction = pre.to_case_grid(probabilities.argmax(0).astype(np.uint8))
        reference, grid = load_label(case.label, allowed=set(adapter.edition.label_values))
        rows += evaluate_case(prediction, reference, grid.spacing, adapter.edition.regions, protocol)
    return {m: float(np.nanmean([row["value"] for row in rows if row["metric"] == m])) for m in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/brainbench-bench-brosch"))
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--test-cases", type=int, default=2)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--kernels", type=int, nargs=2, default=[5, 5])
    parser.add_argument("--filters", type=int, nargs=2, default=[16, 16])
    parser.add_argument("--steps", type=int, default=150, help="training steps (one case each) per variant")
    parser.add_argument("--r", type=float, nargs="+", default=[0.05, 0.5],
                        help="sensitivity weights to train with, one pair of variants each")
    parser.add_argument("--optimizer", choices=("config", "adam"), default="config")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (--optimizer adam)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    adapter = ChallengeAdapter("msseg2016", modalities=MODALITIES)
    synth_root = args.workdir / "synthetic"
    synthesize("msseg2016", synth_root, n_cases=args.cases, spacing_mm=args.spacing, seed=args.seed)
    cases = sorted(adapter.discover(synth_root), key=lambda c: c.case_id)
    train_cases, test_cases = cases[:-args.test_cases], cases[-args.test_cases:]
    cache = PreprocessedCache(args.workdir / "cache", ZScoreInBrain())
    real_cases = adapter.discover(real_release(args.workdir / "real"))
    real_cache = PreprocessedCache(args.workdir / "cache", Pipeline([ResampleSpacing([args.spacing] * 3),
                                                                     ZScoreInBrain()]))
    training = [cache.load(case, adapter) for case in train_cases]
    if args.optimizer == "adam":
        optimiser_name = f"Adam lr {args.lr}"

        def make_optimiser(params):
            return torch.optim.Adam(params, lr=args.lr)
    else:
        make_optimiser = instantiate(compose(["model=brosch_cen"]).model.optimizer)
        optimiser_name = f"{make_optimiser.func.__name__} {make_optimiser.keywords} (conf/model/brosch_cen.yaml)"

    print(f"CEN-s reconstruction at kernels {tuple(args.kernels)}, filters {tuple(args.filters)}; "
          f"{len(train_cases)} synthetic training cases at {args.spacing:g} mm (brain boxes "
          f"{', '.join('×'.join(str(b.stop - b.start) for b in brain_box(c.image)) for c in training)}), "
          f"sensitivity–specificity objective, {optimiser_name}, {args.steps} steps per variant, "
          f"{torch.get_num_threads()} threads\n")
    print("| variant | parameters | r | data | cases | lesion Dice | LTPR | LPPV | train minutes | final loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in args.r:
        for shortcut in (True, False):
            torch.manual_seed(args.seed)
            net = BroschCEN(len(MODALITIES), 2, args.kernels, args.filters, shortcut=shortcut)
            started = time.perf_counter()
            loss = train(net, training, args.steps, r, make_optimiser(net.parameters()), args.seed)
            minutes = (time.perf_counter() - started) / 60
            name = "CEN-s (shortcut)" if shortcut else "CEN (no shortcut)"
            n_params = sum(p.numel() for p in net.parameters())
            for data, split, split_cache in (("synthetic held-out", test_cases, cache),
                                             ("real MS patient19 (1 mm)", real_cases, real_cache)):
                metrics = score(net, adapter, split, split_cache)
                print(f"| {name} | {n_params:,} | {r:g} | {data} | {len(split)} | {metrics['dice']:.3f} | "
                      f"{metrics['lesion_tpr']:.3f} | {metrics['lesion_ppv']:.3f} | {minutes:.1f} | "
                      f"{loss:.4f} |", flush=True)


if __name__ == "__main__":
    main()
