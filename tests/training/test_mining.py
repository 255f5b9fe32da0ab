"""Hard-negative mining for Dou's stage 2 (spec §5.5) on hand-built cases: known CMB spheres, known
bright mimics, and a stand-in screen whose score at voxel 2v is sigmoid(gain · image[2v])."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from brainbench.data.cache import PreprocessedCase
from brainbench.errors import BrainbenchConfigError
from brainbench.io import Grid
from brainbench.models.dou import CandidatePatches, DouCascade, DouScreeningFCN
from brainbench.training.mining import HardNegativeSampler

SHAPE = (40, 40, 24)
CMBS = [(10, 10, 8), (30, 24, 14)]
MIMICS = [(20, 30, 6), (6, 32, 18)]


class CentreVoxelScreen(nn.Module):
    """Logits (0, gain · x) at each 16×16×10 window's centre voxel (7, 7, 4) from its start, stride 2:
    the geometry of the screening FCN, with a score we can predict by hand."""

    in_channels = 1

    def __init__(self, gain: float = 10.0):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x: Tensor) -> Tensor:
        nx, ny, nz = DouScreeningFCN.output_size(x.shape[2:])
        centre = x[:, :1, 7::2, 7::2, 4::2][:, :, :nx, :ny, :nz]
        return torch.cat([torch.zeros_like(centre), self.gain * centre], dim=1)


def make_case(case_id: str, cmbs=(), mimics=()) -> PreprocessedCase:
    """Background -1; CMB spheres of radius 2 (labelled) and single-voxel mimics (unlabelled) at +3."""
    image = -np.ones((1, *SHAPE), np.float32)
    label = np.zeros(SHAPE, np.int8)
    grid = np.indices(SHAPE)
    for centre in cmbs:
        sphere = ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= 4
        label[sphere], image[0, sphere] = 1, 3.0
    for centre in mimics:
        image[(0, *centre)] = 3.0
    brain = np.zeros(SHAPE, bool)
    brain[4:36, 4:36, 2:22] = True
    return PreprocessedCase(case_id, image, label, brain, Grid(SHAPE, np.eye(4)), {})


@pytest.fixture
def net() -> DouCascade:
    net = DouCascade(screening={"maps": (1, 1, 1, 1)}, discrimination={"maps": (1, 1), "hidden": (1, 1)},
                     screening_threshold=0.5, nms_radius=5)
    net.screening = CentreVoxelScreen()
    return net


def test_mines_cmb_centres_and_far_candidates(net):
    cases = [make_case("a", CMBS, MIMICS[:1]), make_case("b", (), MIMICS[1:])]
    sampler = HardNegativeSampler(hit_distance=3.0)
    sampler.prepare(net, cases)
    positives, negatives = sampler.mined("a")
    # each sphere's even voxels form a plateau merged into one candidate 2 voxels from its centre: a hit
    assert sorted(map(tuple, positives.tolist())) == CMBS
    assert negatives.tolist() == [list(MIMICS[0])]
    assert sampler.mined("b")[0].shape == (0, 3) and sampler.mined("b")[1].tolist() == [list(MIMICS[1])]

    rng = np.random.default_rng(0)
    extract = CandidatePatches()
    draws = [sampler.draw(cases, rng) for _ in range(400)]
    kinds = {"pos": 0, "neg": 0}
    for case, centre in draws:
        (patch,), target = extract(case.image, case.label, centre, rng)
        if (case.case_id, centre) in {("a", c) for c in CMBS}:
            kinds["pos"] += 1
            assert target == 1
        else:
            assert (case.case_id, centre) in {("a", MIMICS[0]), ("b", MIMICS[1])}
            kinds["neg"] += 1
            assert target == 0
    assert 150 < kinds["pos"] < 250  # positive_fraction 0.5 (binomial sd 10)
    assert {c.case_id for c, _ in draws} == {"a", "b"}


def test_hit_distance_decides_which_candidates_are_mimics(net):
    # with a hit distance below 2 voxels the sphere's own candidate becomes a hard negative
    sampler = HardNegativeSampler(hit_distance=1.0, device="auto")
    sampler.prepare(net, [make_case("a", CMBS[:1])])
    negatives = sampler.mined("a")[1]
    assert len(negatives) == 1 and np.linalg.norm(negatives[0] - CMBS[0]) == 2.0


def test_only_positives_or_nothing(net):
    cases = [make_case("a", CMBS), make_case("empty")]
    sampler = HardNegativeSampler(hit_distance=3.0, positive_fraction=0.0)
    sampler.prepare(net, cases)
    rng = np.random.default_rng(1)
    assert all(c.case_id == "a" and centre in CMBS for c, centre in (sampler.draw(cases, rng) for _ in range(20)))
    # nothing mined at all: a background brain voxel of a random case
    for _ in range(20):
        case, centre = sampler.draw(cases[1:], rng)
        assert case.brain[centre] and case.label[centre] == 0


def test_unprepared_cases_and_bad_settings_are_reported(net):
    with pytest.raises(BrainbenchConfigError, match="not prepared"):
        HardNegativeSampler().draw([make_case("a")], np.random.default_rng(0))
    with pytest.raises(BrainbenchConfigError, match="no submodule"):
        HardNegativeSampler(stage="stage1").prepare(net, [make_case("a")])
    with pytest.raises(BrainbenchConfigError, match="positive_fraction"):
        HardNegativeSampler(positive_fraction=2)
