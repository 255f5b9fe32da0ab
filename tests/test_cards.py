"""Model cards: every shipped model has one; its counts, geometry and receptive field agree with freshly
built modules and with the numbers the spec (architectures.md) states; its reconstructions cover the
values the model configs mark as reconstructions; ``brainbench models`` prints them (real CLI process)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict
from torch import nn

from brainbench.cards import NOT_GIVEN, ModelCard, card_for, model_cards
from brainbench.config import compose
from brainbench.errors import BrainbenchConfigError
from brainbench.models.brosch import BroschCEN
from brainbench.models.deepmedic import DeepMedic, DeepMedicPlus
from brainbench.models.dou import DouCascade
from brainbench.models.havaei import InputCascadeCNN, LocalCascadeCNN, MFCascadeCNN, TwoPathCNN
from brainbench.models.pereira import pereira_hgg, pereira_lgg
from brainbench.models.unet3d import UNet3D
from tests.helpers import run_cli

MODEL_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"

FRESH = {  # the module each card describes, built without the config, for the channels/classes of its edition
    "brosch_cen": lambda: BroschCEN(4, 2),
    "deepmedic": lambda: DeepMedic(4, 5),
    "deepmedic_plus": lambda: DeepMedicPlus(4, 5),
    "dou_cascade": lambda: DouCascade(1, 2),
    "havaei_inputcascade": lambda: InputCascadeCNN(in_channels=4, n_classes=5),
    "havaei_localcascade": lambda: LocalCascadeCNN(in_channels=4, n_classes=5),
    "havaei_mfcascade": lambda: MFCascadeCNN(in_channels=4, n_classes=5),
    "havaei_twopath": lambda: TwoPathCNN(4, 5),
    "pereira_hgg": lambda: pereira_hgg(in_channels=4, n_classes=5),
    "pereira_lgg": lambda: pereira_lgg(in_channels=4, n_classes=5),
    "unet3d": lambda: UNet3D(3, 4),
}

SPEC_COUNTS = {  # (actual, paper convention) as architectures.md §1.8, §2.2, §3.8, §4.3, §5.2-5.3 state them
    "brosch_cen": (1_633_057, 1_633_057),
    "deepmedic": (663_163, 663_163),
    "deepmedic_plus": (1_053_163, 1_053_163),
    "dou_cascade": (229_700 + 1_364_338, 229_700 + 1_364_338),
    "havaei_twopath": (809_637, 651_488),
    "havaei_inputcascade": (1_921_034, 802_368),
    "havaei_localcascade": (None, 654_368),
    "havaei_mfcascade": (None, 662_513),
    "pereira_hgg": (2_118_213, 2_118_213),
    "pereira_lgg": (1_933_701, 1_933_701),
    "unet3d": (19_074_692, 19_074_692),  # 3 channels, 4 classes (MRBrainS13), the unet3d module docstring
}


@pytest.fixture(scope="module")
def cards() -> dict[str, ModelCard]:
    return {card.name: card for card in model_cards(compose=compose)}


def test_every_model_config_has_a_filled_card(cards):
    assert sorted(cards) == sorted(path.stem for path in MODEL_DIR.glob("*.yaml")) == sorted(FRESH)
    for card in cards.values():
        assert card.title != card.name and card.paper and card.layers and card.recipe and card.dimensionality
        assert isinstance(card.year, int) and 2015 <= card.year <= 2017
        assert all(r.value != "not in this config" for r in card.reconstructions), card.name
        markdown = card.to_markdown()
        assert markdown.startswith(f"### {card.name}: {card.title}\n") and "| Receptive field |" in markdown
        assert all(f"`{r.key}`" in markdown for r in card.reconstructions)


@pytest.mark.parametrize("name", sorted(FRESH))
def test_parameter_counts_match_a_fresh_module_and_the_spec(cards, name):
    card, net = cards[name], FRESH[name]()
    assert card.parameters_actual == sum(p.numel() for p in net.parameters())
    actual, paper = SPEC_COUNTS[name]
    assert card.parameters_paper == paper
    if actual is not None:
        assert card.parameters_actual == actual


def test_geometry_and_receptive_field_as_the_spec_states(cards):
    def sizes(extents):
        return [extent.size for extent in extents]

    deepmedic = cards["deepmedic"].geometry  # §3.3, §3.6: 25³ + 19³ segments predict 9³; RF 17³, 51³ context
    assert sizes(deepmedic.input) == [(25, 25, 25), (19, 19, 19)]
    assert sizes(deepmedic.output) == [(9, 9, 9)]
    assert sizes(deepmedic.receptive_field) == [(17, 17, 17), (51, 51, 51)]
    assert sizes(cards["deepmedic_plus"].geometry.receptive_field) == [(19, 19, 19), (53, 53, 53)]  # §3.6
    twopath = cards["havaei_twopath"].geometry  # §1.4, §1.9: 33×33 → 1×1, RF 33×33
    assert (sizes(twopath.input), sizes(twopath.output), sizes(twopath.receptive_field)) == \
        ([(33, 33)], [(1, 1)], [(33, 33)])
    for name, window in (("havaei_inputcascade", 65), ("havaei_localcascade", 56), ("havaei_mfcascade", 53)):
        assert sizes(cards[name].geometry.receptive_field) == [(window, window), (33, 33)]  # §1.6
    assert sizes(cards["brosch_cen"].geometry.receptive_field) == [(50, 50, 50), (17, 17, 17)]  # §4.3
    assert sizes(cards["dou_cascade"].geometry.receptive_field) == [(16, 16, 10), (20, 20, 16)]  # §5.4, §5.3
    assert str(cards["deepmedic"].geometry.receptive_field[0]) == "17³ normal pathway"


def marked_keys(path: Path) -> set[str]:
    """Config keys of a model file whose comment marks a reconstruction (``reconstruction`` or ``[M]``): a
    key's own trailing comment, or a comment line inside its block; ``_target_`` stands for its node."""
    marked, stack = set(), []
    for line in path.read_text().splitlines():
        if line.startswith("card:"):
            break
        indent = len(line) - len(line.lstrip())
        body, _, comment = line.strip().partition("#")
        key = re.match(r"([A-Za-z_]\w*):", body)
        if key:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key.group(1)))
            owners = [k for _, k in stack if k != "_target_"]
        elif not body and comment:  # a comment line: it belongs to the innermost block it sits in
            owners = [k for i, k in stack if i < indent]
        else:
            continue
        if owners and ("reconstruction" in comment or "[M]" in comment):
            marked.add(".".join(["model", *owners]))
    return marked


def test_reconstructions_cover_the_values_the_configs_mark(cards):
    assert marked_keys(MODEL_DIR / "brosch_cen.yaml") >= {"model.net.kernel_sizes", "model.optimizer"}
    for name, card in cards.items():
        assert marked_keys(MODEL_DIR / f"{name}.yaml") <= {r.key for r in card.reconstructions}, name


def test_a_run_card_shows_the_run_values():
    cfg = compose(["model=havaei_twopath", "challenge=brats2020", "model.net.maxout_pieces=1"])
    card = card_for(cfg, TwoPathCNN(4, 4, maxout_pieces=1))
    assert card.edition == "brats2020" and card.n_classes == 4
    assert card.parameters_actual == card.parameters_paper + (64 + 64 + 160) + 4  # K = 1: weights, then biases
    assert next(r.value for r in card.reconstructions if r.key == "model.net.maxout_pieces") == "1"
    assert OmegaConf.select(cfg, "model.card.edition") == "brats2013"  # the card's edition, not the run's


def test_a_model_without_card_node_or_geometry_still_has_a_card():
    """A user's own model config (no ``card:``) and net (no registered geometry)."""
    cfg = compose(["model=deepmedic"])
    with open_dict(cfg):
        del cfg.model["card"]
    card = card_for(cfg, nn.Linear(3, 2))
    assert (card.title, card.paper, card.year, card.reconstructions) == ("deepmedic", NOT_GIVEN, None, ())
    assert card.parameters_actual == card.parameters_paper == 8
    assert str(card.geometry.receptive_field[0]) == "not described"
    assert "Reconstructions: none" in card.to_markdown()


def test_unknown_model_is_a_config_error():
    with pytest.raises(BrainbenchConfigError, match="unknown model no_such_net: expected one of .*deepmedic"):
        model_cards(["deepmedic", "no_such_net"], compose=compose)


def test_brainbench_models_cli(tmp_path):
    tables = run_cli("models", cwd=tmp_path, timeout=300)
    assert tables.returncode == 0, tables.stderr
    assert all(f"{name}: " in tables.stdout for name in FRESH) and "809,637 (paper convention: 651,488)" in tables.stdout
    assert "9³ in both conv layers [M]" in tables.stdout  # evidence tags are text, not rich markup
    markdown = run_cli("models", "deepmedic_plus", "--markdown", cwd=tmp_path, timeout=300)
    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout.startswith("### deepmedic_plus: ")
    assert "| Parameters | 1,053,163 (paper convention: 1,053,163) |" in markdown.stdout
    assert "| Receptive field | 19³ normal pathway; 53³ voxels of context (subsampled pathway) |" in markdown.stdout
    bad = run_cli("models", "resnet", cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("brainbench: error: unknown model resnet: expected one of ")
    assert len(bad.stderr.strip().splitlines()) == 1
