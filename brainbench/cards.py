"""Model cards: what each model is, where its layers and recipe come from, and which values are guesses.

A card joins three sources, none of them restated here: the ``card:`` node of the model's config
(``conf/model/<name>.yaml``: paper, year, the paper's table or section the layers follow, dimensionality,
recipe source, the edition of the paper's experiments, and the config keys whose values are
reconstructions), the instantiated net (receptive field, output size, parameter counts: the models'
testable properties) and the composed config (training segment sizes, the edition's channels and classes).

:func:`card_for` builds the card of one run (logged as ``model_card.md`` and as the MLflow run
description); :func:`model_cards` builds every shipped model's card for ``brainbench models`` and the README.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import singledispatch
from importlib.resources import files
from typing import Any, NamedTuple

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from brainbench.challenges.base import Edition
from brainbench.errors import BrainbenchConfigError
from brainbench.models.brosch import BroschCEN, CroppedVolumes
from brainbench.models.deepmedic import DeepMedic, TwoPathwaySegments
from brainbench.models.dou import SCREENING_PATCH, DouCascade, ScreeningPatches
from brainbench.models.havaei import InputCascadeCNN, LocalCascadeCNN, MFCascadeCNN, TwoPathCNN
from brainbench.models.patches import AxialPatches
from brainbench.models.pereira import PereiraCNN
from brainbench.models.unet3d import PatchSegments, UNet3D

__all__ = ["Extent", "Geometry", "ModelCard", "Reconstruction", "card_for", "geometry", "model_cards",
           "model_names", "parameter_counts"]

Compose = Callable[[Sequence[str]], DictConfig]
"""``brainbench.config.compose``: overrides → the composed run config (a layer above this module)."""


def parameter_counts(net: nn.Module) -> dict[str, int]:
    """Trainable parameters as PyTorch counts them, and as the paper counted them where that differs
    (Havaei counts TwoPath's softmax layer once per class map, spec §1.8)."""
    actual = sum(p.numel() for p in net.parameters())
    paper = net.paper_parameter_count() if hasattr(net, "paper_parameter_count") else actual
    return {"model/parameters_actual": actual, "model/parameters_paper_convention": paper}


def format_size(size: Sequence[int]) -> str:
    """``25³`` for a cube, ``33×33`` or ``16×16×10`` otherwise, nothing for no size."""
    if len(size) == 3 and len(set(size)) == 1:
        return f"{size[0]}³"
    return "×".join(map(str, size))


class Extent(NamedTuple):
    """A size per axis (voxels, or pixels of a 2D net) and what it is the size of; no size: words only."""

    part: str
    size: tuple[int, ...] = ()

    def __str__(self) -> str:
        return " ".join(text for text in (format_size(self.size), self.part) if text)


class Geometry(NamedTuple):
    """One training step's input per pathway, its output, and the receptive field of an output voxel."""

    input: tuple[Extent, ...]
    output: tuple[Extent, ...]
    receptive_field: tuple[Extent, ...]


def _square(size: int) -> tuple[int, int]:
    return (size, size)


def _per_axis(size: int | Sequence[int]) -> tuple[int, ...]:
    """A config's size, one int for a cube or one per axis, per axis."""
    return (size,) * 3 if isinstance(size, int) else tuple(size)


@singledispatch
def geometry(net: nn.Module, segments: Any) -> Geometry:
    """The training geometry of ``net`` fed by ``segments`` (the model's training-input extractor).

    A net without a registered description (a user's own) shows its ``receptive_field`` if it has one.
    """
    field = getattr(net, "receptive_field", None)
    return Geometry((Extent("not described"),), (Extent("not described"),),
                    (Extent(str(field) if field is not None else "not described"),))


@geometry.register
def _(net: TwoPathCNN | PereiraCNN, segments: AxialPatches) -> Geometry:
    window = sum(segments.margin) + 1
    return Geometry((Extent("axial patch", _square(window)),),
                    (Extent("logits", _square(net.output_size(window))),),
                    (Extent("pixels", _square(net.receptive_field)),))


@geometry.register
def _(net: InputCascadeCNN | LocalCascadeCNN | MFCascadeCNN, segments: AxialPatches) -> Geometry:
    window, stage2 = sum(segments.margin) + 1, net.stage2.receptive_field
    return Geometry((Extent("axial stage-1 window", _square(window)),
                     Extent("stage-2 patch at its centre", _square(stage2))),
                    (Extent("logits", _square(net.output_size(window))),),
                    (Extent("pixels (stage 1)", _square(net.receptive_field)),
                     Extent("pixels (stage 2 alone)", _square(stage2))))


@geometry.register
def _(net: DeepMedic, segments: TwoPathwaySegments) -> Geometry:
    output = net.output_size(segments.segment_size)
    factor = net.subsample_factor
    return Geometry((Extent("normal pathway", _per_axis(segments.segment_size)),
                     Extent(f"subsampled pathway (×{factor})", net.subsampled_input_size(output))),
                    (Extent("logits", output),),
                    (Extent("normal pathway", _per_axis(net.receptive_field)),
                     Extent("voxels of context (subsampled pathway)", _per_axis(net.subsampled_receptive_field))))


@geometry.register
def _(net: BroschCEN, segments: CroppedVolumes) -> Geometry:
    deep, shortcut = net.receptive_field
    volume = Extent("brain bounding box of each case") if segments.size is None \
        else Extent("window", _per_axis(segments.size))
    return Geometry((volume,), (Extent("the input's size"),),
                    (Extent("deep path", _per_axis(deep)), Extent("shortcut path", _per_axis(shortcut))))


@geometry.register
def _(net: DouCascade, segments: ScreeningPatches) -> Geometry:
    screening, candidate = tuple(segments.size), net.discrimination.patch_size
    return Geometry((Extent("screening patch", screening), Extent("candidate patch (stage 2)", candidate)),
                    (Extent("score (stride 2 over a volume)", net.screening.output_size(screening)),
                     Extent("one label per candidate (stage 2)")),
                    (Extent("screening FCN", SCREENING_PATCH), Extent("candidate patch, via FC", candidate)))


@geometry.register
def _(net: UNet3D, segments: PatchSegments) -> Geometry:
    patch = _per_axis(segments.patch_size)
    return Geometry((Extent("patch", patch),), (Extent("logits", net.output_size(patch)),),
                    (Extent("", _per_axis(net.receptive_field)),))


class Reconstruction(NamedTuple):
    """A config value the paper does not report: its key in the run config, the value used and why."""

    key: str
    value: str
    note: str


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}{'es' if noun.endswith('s') else 's'}"


NOT_GIVEN = "not given"
"""What a card shows for a field its model config does not fill (a user's own model)."""


@dataclass(frozen=True)
class ModelCard:
    """One model's card (module docstring); :meth:`to_markdown` is what runs log and the README shows."""

    name: str
    title: str
    paper: str
    year: int | None
    layers: str
    dimensionality: str
    edition: str
    channels: tuple[str, ...]
    n_classes: int
    geometry: Geometry
    parameters_actual: int
    parameters_paper: int
    recipe: str
    reconstructions: tuple[Reconstruction, ...]

    def rows(self) -> list[tuple[str, str]]:
        """(field, value) pairs of the card's table, in the order a reader wants them."""
        def joined(extents: Iterable[Extent]) -> str:
            return "; ".join(map(str, extents))

        return [
            ("Paper", self.paper if self.year is None else f"{self.paper}, {self.year}"),
            ("Layers follow", self.layers),
            ("Dimensionality", self.dimensionality),
            ("Composed for", f"{self.edition}: {_count(len(self.channels), 'channel')} ({', '.join(self.channels)}), "
                             f"{_count(self.n_classes, 'class')}"),
            ("Training input", joined(self.geometry.input)),
            ("Training output", joined(self.geometry.output)),
            ("Receptive field", joined(self.geometry.receptive_field)),
            ("Parameters", f"{self.parameters_actual:,} (paper convention: {self.parameters_paper:,})"),
            ("Training recipe", self.recipe),
        ]

    def reconstruction_lines(self) -> list[str]:
        """One line per reconstructed value: ``key = value: why``."""
        return [f"{r.key} = {r.value}: {r.note}" for r in self.reconstructions]

    def to_markdown(self) -> str:
        """A short Markdown section: heading, table of fields, the reconstructed values."""
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        lines = [f"### {self.name}: {self.title}", "", "| Field | Value |", "|---|---|",
                 *(f"| {field} | {cell(value)} |" for field, value in self.rows()), ""]
        if not self.reconstructions:
            return "\n".join([*lines, "Reconstructions: none; every value follows the paper or its authors' "
                                       "configuration.", ""])
        lines.append("Reconstructions (values the paper does not report, chosen here; each is a config key a "
                     "run can override):")
        lines += [f"- `{r.key}` = `{r.value}`: {r.note}" for r in self.reconstructions]
        return "\n".join([*lines, ""])


def _shown(value: Any) -> str:
    """A config value in one line: ``Adadelta(lr=1.0, rho=0.95)`` for an instantiable node."""
    if isinstance(value, dict):
        arguments = ", ".join(f"{key}={_shown(item)}" for key, item in value.items() if not str(key).startswith("_"))
        target = value.get("_target_")
        return f"{str(target).rsplit('.', 1)[-1]}({arguments})" if target else arguments
    if isinstance(value, list):
        return f"[{', '.join(map(_shown, value))}]"
    return str(value)


_ABSENT = object()

_MODEL_CONFIGS = files("brainbench.conf").joinpath("model")


def _reconstruction(cfg: DictConfig, item: DictConfig) -> Reconstruction:
    """The card's ``{key, note}`` item with the run's value of ``key`` (a user may have overridden it)."""
    value = OmegaConf.select(cfg, item.key, default=_ABSENT)
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return Reconstruction(item.key, "not in this config" if value is _ABSENT else _shown(value), item.note)


def _edition(cfg: DictConfig):
    """The run's edition as its adapter sees it (the channels a config selects, e.g. Dou on VALDO's t2s)."""
    return instantiate(cfg.challenge.adapter, require_labels=False).edition


def card_for(cfg: DictConfig, net: nn.Module, edition: Edition | None = None, segments: Any = None) -> ModelCard:
    """The card of a run: ``cfg`` the composed run config, ``net`` the net it instantiated; ``edition`` and
    ``segments`` (the training segment extractor) as the run built them, instantiated from ``cfg`` when not
    given."""
    node = cfg.model.get("card") or OmegaConf.create()
    edition = edition or _edition(cfg)
    if segments is None and cfg.model.get("segments"):
        segments = instantiate(cfg.model.segments)
    counts = parameter_counts(net)
    return ModelCard(
        name=cfg.model.name, title=node.get("title", cfg.model.name), paper=node.get("paper", NOT_GIVEN),
        year=node.get("year"), layers=node.get("layers", NOT_GIVEN),
        dimensionality=node.get("dimensionality", NOT_GIVEN), edition=edition.name,
        channels=tuple(edition.modalities), n_classes=edition.n_classes, geometry=geometry(net, segments),
        parameters_actual=counts["model/parameters_actual"],
        parameters_paper=counts["model/parameters_paper_convention"], recipe=node.get("recipe", NOT_GIVEN),
        reconstructions=tuple(_reconstruction(cfg, item) for item in node.get("reconstructions") or ()))


def model_names() -> list[str]:
    """The shipped model configs, ``conf/model/*.yaml``, by name."""
    return sorted(entry.name.removesuffix(".yaml") for entry in _MODEL_CONFIGS.iterdir()
                  if entry.name.endswith(".yaml"))


def _composed(name: str, compose: Compose) -> DictConfig:
    """Model ``name`` composed for the edition of its paper's experiments (``card.edition``, read from the
    model's file), where the paper-convention counts are the published ones; the default edition when the card
    names none."""
    edition = OmegaConf.select(OmegaConf.load(_MODEL_CONFIGS.joinpath(f"{name}.yaml")), "card.edition")
    return compose([f"model={name}", *([f"challenge={edition}"] if edition else [])])


def model_cards(names: Sequence[str] | None = None, *, compose: Compose) -> list[ModelCard]:
    """The cards of ``names`` (default: every shipped model), each with its full-width net.

    ``compose``: :func:`brainbench.config.compose`, passed in because configuration sits a layer above.
    """
    known = model_names()
    unknown = [name for name in names or () if name not in known]
    if unknown:
        raise BrainbenchConfigError(f"unknown model {', '.join(unknown)}: expected one of {', '.join(known)}")
    cards = []
    for name in names or known:
        cfg = _composed(name, compose)
        edition = _edition(cfg)
        net = instantiate(cfg.model.net, in_channels=len(edition.modalities), n_classes=edition.n_classes)
        cards.append(card_for(cfg, net, edition))
    return cards
