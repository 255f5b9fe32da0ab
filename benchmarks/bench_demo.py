"""The README's main command, timed: ``make demo`` on a fresh clone, then what its MLflow run recorded.

Usage: python benchmarks/bench_demo.py [--repo .] [--workdir DIR] [--keep]

Clones ``--repo`` (its committed HEAD) into a temporary folder, runs ``make demo`` there (fresh
``.venv``: torch as pinned by the Makefile's TORCH_SPEC, the package and its dependencies, then
``brainbench train`` with the embedded default) and times it. The numbers of the run are then read
from the clone's ``mlflow.db``, not from the console: synthetic cases and split, parameter count,
epochs and steps, seconds per epoch (from the per-epoch metric timestamps), inference seconds per
case, and the held-out Dice/HD95 per region. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient


def run_demo(repo: Path, workdir: Path) -> float:
    """Wall seconds of ``make demo`` in a fresh clone of ``repo`` at ``workdir``."""
    subprocess.run(["git", "clone", "--quiet", str(repo), str(workdir)], check=True)
    started = time.perf_counter()
    result = subprocess.run(["make", "demo"], cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (workdir / "demo.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"make demo failed (exit {result.returncode}); log: {workdir / 'demo.log'}")
    return seconds


def demo_run_facts(workdir: Path) -> dict[str, str]:
    """What the demo's MLflow run recorded (the default experiment holds exactly that run)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("brats2020").experiment_id])
    params, metrics = run.data.params, run.data.metrics
    epochs = client.get_metric_history(run.info.run_id, "train_loss")
    stamps = sorted(m.timestamp for m in epochs)
    per_epoch = (stamps[-1] - stamps[0]) / 1000 / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    record = json.loads(next((workdir / "datasets").rglob("brainbench_synthetic.json")).read_text())
    steps = int(params["sampler.segments_per_epoch"]) // int(params["sampler.batch_size"])
    facts = {
        "data source (tag)": run.data.tags["data_source"],
        "synthetic data": f"{record['n_cases']} cases at {record['spacing_mm']} mm",
        "model": f"{params['model.name']} ({int(params['model/parameters_actual']):,} parameters)",
        "schedule": f"{len(epochs)} epochs × {steps} steps × {params['sampler.batch_size']} segments",
        "seconds per epoch (MLflow timestamps)": f"{per_epoch:.1f}",
        "inference seconds per case": f"{metrics['inference_seconds_per_case']:.1f}",
        "inference device / precision": f"{params['inference/device_used']} / {params['inference/precision_used']}",
    }
    for metric in ("dice", "hd95"):
        facts[f"held-out {metric} WT / TC / ET (mean over test cases)"] = " / ".join(
            f"{metrics[f'{metric}_{r}']:.3f}" for r in ("WT", "TC", "ET"))
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--workdir", type=Path, default=None, help="clone here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="brainbench-demo-")) / "clone"
    commit = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    seconds = run_demo(args.repo, workdir)
    facts = {"commit": commit, "make demo wall time (set-up included)": f"{seconds / 60:.1f} min",
             **demo_run_facts(workdir)}
    print("| step | result |\n|---|---|")
    for key, value in facts.items():
        print(f"| {key} | {value} |")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
