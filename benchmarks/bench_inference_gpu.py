"""Test-time inference on a GPU vs the CPU, full precision vs autocast, on one real BraTS case.

Usage: python benchmarks/bench_inference_gpu.py [--models deepmedic pereira_hgg twopath] [--cpu-tiles 4]

Needs a CUDA device (exits with a one-line message otherwise). Case: the four skull-stripped
modalities of ../shared/data/real/brats_toolkit_TCGA-DU-7294 (240×240×155, 1 mm), z-scored inside
the brain. Models at full width with seeded random weights (see bench_inference_2d.py), run through
the inference functions the configs name, with :class:`InferenceSettings` as the pipeline uses it:

* ``cuda 32`` and ``cuda bf16`` (and ``16``) over the whole volume;
* ``cpu 32`` on ``--cpu-tiles`` DeepMedic tiles or the central slice for the 2D models, extrapolated
  to the volume (a whole CPU pass takes hours for the 2D models — the reason for issue 9 item 13).

Prints seconds per case and, for each autocast precision, the share of brain voxels whose label
equals the full-precision GPU label.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference_2d import load_case, randomised  # noqa: E402  (same case, same weights)

from brainbench.inference.dense import predict_volume  # noqa: E402
from brainbench.inference.device import InferenceSettings  # noqa: E402
from brainbench.inference.patchwise import dense  # noqa: E402
from brainbench.models.deepmedic import DeepMedic  # noqa: E402
from brainbench.models.havaei import TwoPathCNN  # noqa: E402
from brainbench.models.pereira import pereira_hgg  # noqa: E402

MODELS = {"deepmedic": (DeepMedic, predict_volume), "pereira_hgg": (pereira_hgg, dense),
          "twopath": (TwoPathCNN, dense)}


def timed(settings: InferenceSettings, net, predict, image) -> tuple[float, np.ndarray]:
    net.to(settings.device).eval()
    if settings.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with settings.autocast():
        probabilities = predict(net, image)
    if settings.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, probabilities.argmax(0)


def cpu_estimate(name: str, net, predict, image: np.ndarray, tiles: int) -> tuple[float, str]:
    """CPU seconds on a part of the volume, scaled to the whole volume by voxel count."""
    if name == "deepmedic":
        side = 45 * max(1, round(tiles ** (1 / 3)))
        part = image[:, :side, :side, :side]
    else:
        centre = image.shape[3] // 2
        part = image[:, :, :, centre:centre + 1]
    seconds, _ = timed(InferenceSettings(torch.device("cpu"), "32"), net, predict, part)
    return seconds * image[0].size / part[0].size, f"{part.shape[1:]} measured, scaled by voxels"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--cpu-tiles", type=int, default=1)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_inference_gpu: no CUDA device on this machine; nothing to measure")
    image = load_case()
    brain = np.any(image != 0, axis=0)
    print(f"{torch.cuda.get_device_name()}; case {image.shape[1:]}; torch {torch.__version__}")
    print(f"{'model':<12} {'setting':<10} {'s/case':>9} {'vs cpu':>8} {'labels = cuda 32':>17}  note")
    for name in args.models:
        build, predict = MODELS[name]
        net = randomised(build())
        cpu_seconds, note = cpu_estimate(name, net, predict, image, args.cpu_tiles)
        print(f"{name:<12} {'cpu 32':<10} {cpu_seconds:9.1f} {1.0:8.1f}× {'':>17}  {note}")
        reference = None
        for precision in ("32", "bf16", "16"):
            settings = InferenceSettings(torch.device("cuda"), precision)
            timed(settings, net, predict, image[:, :64, :64, :64])  # warm-up: kernels, cuDNN autotune
            seconds, labels = timed(settings, net, predict, image)
            reference = labels if reference is None else reference
            agreement = float((labels == reference)[brain].mean())
            print(f"{name:<12} {'cuda ' + precision:<10} {seconds:9.2f} {cpu_seconds / seconds:8.1f}× "
                  f"{agreement:17.5f}")


if __name__ == "__main__":
    main()
