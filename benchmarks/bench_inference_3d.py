"""Whole-case inference of the 3D models on one real 1 mm BraTS case, on the CPU, against the FLOP
floor of its brain box.

Usage: python benchmarks/bench_inference_3d.py [--models deepmedic deepmedic_plus unet3d]
                                               [--threads 2] [--repeats 2] [--tile-output auto]
                                               [--no-whole-volume]

Case: the 240×240×155 volume of ``bench_inference_2d.load_case`` (four modalities, z-scored in the
brain, background 0). Each model is built, with random weights, and its inference function taken
from the Hydra config (``model=<name>``: ``model.net``, ``model.inference``; ``--tile-output``
overrides a DeepMedic config's ``tile_output``), and the pipeline's call is timed:
``region.predict_in_brain_box(predict, net, image, 4, align=factor)``.

FLOP floor: the FLOPs of one forward pass whose output is exactly the brain box (conv and matmul
multiply-adds × 2, as ``torch.utils.flop_counter`` counts them; BN, activations, softmax not
counted), at the float32 ``torch.mm`` ceiling (4096², best of 3) measured before the first and
after every timed call in the same run; the highest counts. ``measured s`` lists every call and
the ratio uses the best (the machine is shared; the ceilings say how much of it a run had).
DeepMedic's pass is counted analytically (:func:`deepmedic_pass_flops`, checked against
``FlopCounterMode`` on a small tile); a model without a formula (the 3D U-Net) is counted by
``FlopCounterMode`` on the meta device over the box's padded input. ``ratio`` = measured / floor
seconds (issue 10's goal: ≤ 1.3). DeepMedic is also timed on the whole volume, background
included, for comparison.

PyTorch reads ``THP_MEM_ALLOC_ENABLE=1`` at its first large allocation: fresh activations then
fault in as 2 MB pages (set it in the environment; the script prints whether it was set).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference_2d import load_case  # noqa: E402

from brainbench.config import compose  # noqa: E402
from brainbench.data.boxes import brain_box  # noqa: E402
from brainbench.inference.region import predict_in_brain_box  # noqa: E402
from brainbench.models.deepmedic import CONV_LAYERS, DeepMedic  # noqa: E402

N_CLASSES = 4
"""BraTS 2020's classes: background and three tumour labels."""


def matmul_ceiling(n: int = 4096, repeats: int = 3) -> float:
    """Best float32 GFLOP/s of an n×n ``torch.mm``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b))[0] for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _conv_flops(channels: list[int], kernel: int, sizes: list[list[int]]) -> int:
    """2·k³·c_in·c_out per output voxel of each valid conv; ``sizes[i]`` is layer i's output."""
    return sum(2 * kernel ** 3 * c_in * c_out * math.prod(size)
               for c_in, c_out, size in zip(channels, channels[1:], sizes))


def deepmedic_pass_flops(net: DeepMedic, output: tuple[int, int, int]) -> int:
    """FLOPs of one DeepMedic / DeepMedic+ pass predicting an ``output`` block (lattice on its start).

    Normal pathway: layer k (1…8) outputs O + 2(8 − k) voxels per axis; subsampled pathway: the
    same on ceil(O/f) coarse voxels; FC pathway: FC1 with its k³ kernel on the (mirror-padded)
    block, then 1³ layers, all on O voxels.
    """
    def pathway(pathway, block):
        channels = [pathway[0].conv.in_channels, *(b.conv.out_channels for b in pathway)]
        sizes = [[o + 2 * (CONV_LAYERS - k) for o in block] for k in range(1, CONV_LAYERS + 1)]
        return _conv_flops(channels, 3, sizes)

    f = net.subsample_factor
    fc = net.fc_pathway
    channels = [fc[0].conv.in_channels, *(b.conv.out_channels for b in fc)]
    return (pathway(net.normal_pathway, output)
            + pathway(net.subsampled_pathway, [math.ceil(o / f) for o in output])
            + _conv_flops(channels[:2], fc[0].conv.kernel_size[0], [output])
            + _conv_flops(channels[1:], 1, [output] * (len(channels) - 2)))


def counted_flops(net, *inputs) -> int:
    """``FlopCounterMode``'s count of one forward of a copy of ``net`` on the meta device."""
    meta = copy.deepcopy(net).eval().to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(*(torch.empty(shape, device="meta") for shape in inputs))
    return counter.get_total_flops()


def floor_flops(net, box: list[int]) -> tuple[int, str]:
    """FLOPs of one pass over the box, and how they were counted."""
    if isinstance(net, DeepMedic):
        tile = (27, 24, 21)
        analytic = deepmedic_pass_flops(net, tile)
        counted = counted_flops(net, (1, net.in_channels, *[t + 2 * CONV_LAYERS for t in tile]),
                                (1, net.in_channels, *net.subsampled_input_size(tile)))
        assert analytic == counted, f"FLOP formula {analytic} != FlopCounterMode {counted} on {tile}"
        return deepmedic_pass_flops(net, tuple(box)), f"formula (= FlopCounterMode on a {tile} tile)"
    size = net.valid_input_size([e + 2 * getattr(net, "margin", 0) for e in box])
    return counted_flops(net, (1, net.in_channels, *size)), f"FlopCounterMode on {tuple(size)}"


def build(name: str, tile_output: str | None):
    overrides = [f"model={name}"]
    cfg = compose(overrides)
    if tile_output and "tile_output" in cfg.model.inference:
        cfg = compose([*overrides, f"model.inference.tile_output={tile_output}"])
    torch.manual_seed(0)
    net = instantiate(cfg.model.net, in_channels=4, n_classes=N_CLASSES).eval()
    return net, instantiate(cfg.model.inference), dict(cfg.model.inference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["deepmedic", "deepmedic_plus", "unet3d"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per model; the best counts")
    parser.add_argument("--tile-output", default="auto",
                        help="DeepMedic configs' tile_output for this run ('' keeps the config's)")
    parser.add_argument("--no-whole-volume", action="store_true", help="skip DeepMedic's whole-volume run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    image = load_case()
    brain = np.any(image != 0, axis=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, THP_MEM_ALLOC_ENABLE="
          f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; case {tuple(image.shape)}, "
          f"{int(brain.sum()):,} brain voxels\n")
    print("| model | inference | box | GFLOP floor | MFLOP/voxel | ceilings GFLOP/s | floor s "
          "| measured s | ratio (best) | GFLOP/s | % ceiling |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for name in args.models:
        net, predict, settings = build(name, args.tile_output)
        align = getattr(net, "subsample_factor", 1)
        box = brain_box(image, align)  # as predict_in_brain_box cuts it
        box_shape = [s.stop - s.start for s in box]
        flops, how = floor_flops(net, box_shape)
        ceilings, times = [matmul_ceiling()], []
        for _ in range(args.repeats):
            seconds, probabilities = _timed(lambda: predict_in_brain_box(predict, net, image, N_CLASSES,
                                                                         align=align))
            times.append(seconds)
            ceilings.append(matmul_ceiling())
        seconds, ceiling = min(times), max(ceilings)
        floor_s = flops / 1e9 / ceiling
        knobs = ", ".join(f"{k}={v}" for k, v in settings.items() if not k.startswith("_"))
        print(f"| {name} | {knobs} | {'×'.join(map(str, box_shape))} | {flops / 1e9:,.0f} | "
              f"{flops / math.prod(box_shape) / 1e6:.2f} | {' / '.join(f'{c:.0f}' for c in ceilings)} | "
              f"{floor_s:.1f} | {' / '.join(f'{t:.1f}' for t in times)} | {seconds / floor_s:.2f} | "
              f"{flops / seconds / 1e9:.0f} | "
              f"{100 * flops / seconds / 1e9 / ceiling:.0f} |", flush=True)
        labels = np.bincount(probabilities[(slice(None), *box)].argmax(0).ravel(), minlength=N_CLASSES)
        notes.append(f"{name}: floor counted by {how}; labels in the box {labels.tolist()}")
        if name == "deepmedic" and not args.no_whole_volume:
            whole_flops = deepmedic_pass_flops(net, tuple(image.shape[1:]))
            whole_s, _ = _timed(lambda: predict(net, image))
            notes.append(f"deepmedic on the whole volume (no box): {whole_s:.1f} s for "
                         f"{whole_flops / 1e9:,.0f} GFLOP of one pass ({whole_flops / whole_s / 1e9:.0f} "
                         f"GFLOP/s, ceiling after it {matmul_ceiling():.0f})")
    print()
    for note in notes:
        print(f"- {note}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    print(f"- peak resident memory of the run: {peak:.1f} GiB")


if __name__ == "__main__":
    main()
