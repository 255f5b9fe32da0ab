"""Inference runs where the settings say, not where Lightning left the model (issue 9, item 13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from brainbench.challenges import Case, get_edition
from brainbench.data.cache import PreprocessedCase
from brainbench.errors import BrainbenchConfigError
from brainbench.inference.device import InferenceSettings, resolve_device, resolve_precision
from brainbench.inference.predict import predict_cases
from brainbench.io import Grid


class RecordingNet(nn.Module):
    """A 1×1×1 conv that records, per forward pass, the input's device and the autocast dtype in force."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.conv = nn.Conv3d(4, n_classes, 1)
        self.seen: list[tuple[str, torch.dtype | None]] = []
        self.moved_to: list[torch.device] = []

    def forward(self, x):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        self.seen.append((device, dtype))
        return self.conv(x)

    def to(self, *args, **kwargs):
        self.moved_to.append(torch.device(args[0]))
        return super().to(*args, **kwargs)


def _predict(net, image):
    """Like brainbench's inference functions: the input goes to the device the model's weights are on."""
    x = torch.as_tensor(image, device=next(net.parameters()).device)[None]
    return torch.softmax(net(x), 1)[0].float().detach().cpu().numpy()


def _case() -> tuple[Case, PreprocessedCase]:
    grid = Grid(shape=(6, 5, 4), affine=np.eye(4))
    image = np.random.default_rng(0).normal(size=(4, 6, 5, 4)).astype(np.float32)
    pre = PreprocessedCase(case_id="c1", image=image, label=None, brain=np.ones((6, 5, 4), bool), grid=grid,
                           meta={})
    return Case("c1", {}), pre


@pytest.mark.parametrize(("precision", "autocast_dtype"), [("32", None), ("bf16", torch.bfloat16)])
def test_forward_runs_on_the_configured_device_and_precision(tmp_path, precision, autocast_dtype):
    edition = get_edition("brats2020")
    net = RecordingNet(edition.n_classes)
    settings = InferenceSettings(torch.device("cpu"), precision)
    predictions = predict_cases(net, [_case()], edition, _predict, tmp_path, settings=settings)
    assert net.moved_to == [torch.device("cpu")]  # moved before the first forward pass
    assert net.seen == [("cpu", autocast_dtype)]
    assert (tmp_path / "c1.nii.gz").is_file() and predictions.array_grid[0].shape == (6, 5, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_left_on_cpu_by_lightning_runs_on_the_gpu(tmp_path):
    edition = get_edition("brats2020")
    net = RecordingNet(edition.n_classes)  # on the CPU, as Lightning leaves it after fit
    settings = InferenceSettings.from_config("auto", "auto", trainer_accelerator="gpu")
    predict_cases(net, [_case()], edition, _predict, tmp_path, settings=settings)
    assert net.seen[0] == ("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


def test_resolution_follows_trainer_accelerator():
    assert resolve_device("auto", "cpu") == torch.device("cpu")
    assert resolve_device("cpu", "gpu") == torch.device("cpu")  # an explicit device wins
    assert resolve_precision("auto", torch.device("cpu")) == "32"
    if not torch.cuda.is_available():
        assert resolve_device("auto", "auto") == torch.device("cpu")
        with pytest.raises(BrainbenchConfigError, match="no cuda device"):
            resolve_device("auto", "gpu")
    with pytest.raises(BrainbenchConfigError, match="trainer.accelerator='tpu'"):
        resolve_device("auto", "tpu")
    with pytest.raises(BrainbenchConfigError, match="inference.precision='fp8'"):
        resolve_precision("fp8", torch.device("cpu"))
