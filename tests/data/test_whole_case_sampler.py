"""Whole-volume training items (Brosch et al. 2016): one case per item, centred on its brain box."""

from __future__ import annotations

import numpy as np
import pytest

from brainbench.data.cache import PreprocessedCase
from brainbench.data.sampling import WholeCaseSampler
from brainbench.io import Grid


def case(case_id: str, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> PreprocessedCase:
    brain = np.zeros((20, 16, 12), bool)
    brain[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return PreprocessedCase(case_id, np.zeros((1, 20, 16, 12), np.float32), np.zeros((20, 16, 12), np.int8), brain,
                            Grid((20, 16, 12), np.eye(4)), {})


def test_centre_is_the_middle_of_the_brain_box_and_cases_are_drawn_uniformly():
    cases = [case("a", (2, 3, 4), (9, 12, 7)), case("b", (0, 0, 0), (20, 16, 12))]
    sampler, rng = WholeCaseSampler(), np.random.default_rng(0)
    draws = [sampler.draw(cases, rng) for _ in range(400)]
    # by hand: voxels 2..8, 3..11, 4..6 → middles (2+8)//2, (3+11)//2, (4+6)//2; 0..19, 0..15, 0..11
    assert {c.case_id: centre for c, centre in draws} == {"a": (5, 7, 5), "b": (9, 7, 5)}
    assert 160 < sum(c.case_id == "a" for c, _ in draws) < 240


def test_an_empty_brain_mask_is_an_error_naming_the_case():
    with pytest.raises(ValueError, match="case empty has an empty brain mask"):
        WholeCaseSampler().draw([case("empty", (0, 0, 0), (0, 0, 0))], np.random.default_rng(0))
