"""brainbench's Hydra config: where it lives, what the edition declarations add to it, and composition.

The tree is the repository's top-level ``conf/``, shipped inside the package as ``brainbench.conf``
so an installed brainbench finds it from any folder (``pkg://brainbench.conf``). A user's own folder
extends it with Hydra's ``--config-dir DIR`` (or ``hydra.searchpath``): extra groups or files there
(``model/my_net.yaml``, ``challenge/my_cohort.yaml``) are found next to the shipped ones.

:func:`register` adds what the edition declarations make unnecessary to write as files: one
``challenge/<edition>`` config per registered edition (Hydra's ConfigStore) and the resolvers that
give ``conf/data/synthetic.yaml`` each edition's look-alike defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from brainbench.challenges import EDITIONS

CONFIG_MODULE = "brainbench.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"


def challenge_node(edition: str) -> dict[str, Any]:
    """The ``challenge`` config of a registered edition: its name and the adapter reading its release."""
    return {"edition": edition,
            "adapter": {"_target_": "brainbench.challenges.ChallengeAdapter", "edition": "${..edition}",
                        "modalities": None, "require_labels": True}}


def synthetic_default(edition: str, key: str) -> Any:
    """A default (``n_cases``, ``spacing_mm``) of a registered edition's look-alike; None when there is none."""
    declared = EDITIONS[edition].synthetic if edition in EDITIONS else None
    return getattr(declared, key) if declared is not None else None


def spacing_tag(edition: str, spacing_mm: Any) -> str:
    """Folder-name-safe spacing, the edition's declared one when ``spacing_mm`` is None: ``2.0mm``,
    ``0.958x0.958x3.0mm``."""
    if spacing_mm is None:
        spacing_mm = synthetic_default(edition, "spacing_mm") or "none"
    values = list(spacing_mm) if isinstance(spacing_mm, (list, tuple)) or OmegaConf.is_list(spacing_mm) \
        else [spacing_mm]
    return "x".join(str(v) for v in values) + "mm"


def fold_tag(fold: Any) -> str:
    """``-fold2`` in run names of cross-validation runs, nothing otherwise."""
    return "" if fold is None else f"-fold{fold}"


def present_channels(edition: str, names: Any) -> list[str]:
    """The channels among ``names`` that a registered edition has (all of ``names`` for another), so that one
    preprocessing config serves editions that name a channel differently (BRATS 2013 ``t1c``, BraTS 2017+
    ``t1ce``)."""
    names = list(names)
    return [name for name in names if name in EDITIONS[edition].modalities] if edition in EDITIONS else names


def register() -> None:
    """Add the edition configs and resolvers (idempotent; call before composing)."""
    store = ConfigStore.instance()
    for name in EDITIONS:
        store.store(group="challenge", name=name, node=challenge_node(name), provider="brainbench")
    OmegaConf.register_new_resolver("brainbench.synthetic", synthetic_default, replace=True)
    OmegaConf.register_new_resolver("brainbench.spacing_tag", spacing_tag, replace=True)
    OmegaConf.register_new_resolver("brainbench.fold_tag", fold_tag, replace=True)
    OmegaConf.register_new_resolver("brainbench.present_channels", present_channels, replace=True)


def compose(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """The composed training config, as ``brainbench train OVERRIDES`` would see it (no job is run).

    ``config_dir`` adds a user's config folder to the search path, like ``--config-dir``.
    """
    register()
    GlobalHydra.instance().clear()
    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*extra, *overrides])
