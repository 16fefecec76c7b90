"""The stages an ``AlgoConfig`` chooses: its stage lists plus the flat option names users know
from TRL / verl, read once into callable :class:`Stage` lists.

``algo.tis_cap=c`` is the loss modifier ``{name: tis, cap: c}``, ``algo.top_entropy_quantile=q``
(q < 1) is ``{name: top_entropy, quantile: q}`` and ``algo.advantage_clip=c`` is the advantage
modifier ``{name: clip, bound: c}``. An alias adds its stage ahead of the listed ones (in the
order of the table below); naming the same stage in the list with other options is an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from workbench.registry import ConfigError
from workbench.stages.base import ADVANTAGE_MODIFIERS, LOSS_MODIFIERS, REWARD_SHAPERS, Stage, StageRegistry

# the stage-list fields of AlgoConfig and the registry each one names stages from
KINDS = {
    "loss_modifiers": LOSS_MODIFIERS,
    "advantage_modifiers": ADVANTAGE_MODIFIERS,
    "reward_shapers": REWARD_SHAPERS,
}


@dataclass(frozen=True)
class FlatAlias:
    """A flat AlgoConfig key that stands for one option of one stage; ``off`` is its value
    that adds no stage."""

    key: str
    kind: str
    stage: str
    option: str
    off: Any


FLAT_ALIASES = (
    FlatAlias("tis_cap", "loss_modifiers", "tis", "cap", off=None),
    FlatAlias("top_entropy_quantile", "loss_modifiers", "top_entropy", "quantile", off=1.0),
    FlatAlias("advantage_clip", "advantage_modifiers", "clip", "bound", off=None),
)


@dataclass(frozen=True)
class ConfiguredStages:
    """The stages of one algorithm, per kind, in the order they run."""

    loss_modifiers: List[Stage] = field(default_factory=list)
    advantage_modifiers: List[Stage] = field(default_factory=list)
    reward_shapers: List[Stage] = field(default_factory=list)


def configured_stages(algo: Any) -> ConfiguredStages:
    """Build and validate every stage ``algo`` names (its stage lists and the flat aliases);
    each problem is one ``ConfigError`` line naming the config key."""
    stages = {}
    for kind, registry in KINDS.items():
        listed = [registry.build(entry, f"algo.{kind}[{i}]") for i, entry in enumerate(getattr(algo, kind))]
        _refuse_repeats(listed, kind)
        aliased = [_aliased_stage(alias, getattr(algo, alias.key), registry, listed)
                   for alias in FLAT_ALIASES if alias.kind == kind]
        stages[kind] = [stage for stage in aliased if stage is not None] + listed
    return ConfiguredStages(**stages)


def _refuse_repeats(listed: List[Stage], kind: str) -> None:
    names = [stage.name for stage in listed]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"algo.{kind} names '{name}' twice; give each stage once")


def _aliased_stage(alias: FlatAlias, value: Any, registry: StageRegistry, listed: List[Stage]) -> Optional[Stage]:
    """The stage a flat key adds, or None when it is off or the list already names that stage
    with the same option value (a different value is a conflict)."""
    if value == alias.off:
        return None
    stage = registry.build({"name": alias.stage, alias.option: value}, f"algo.{alias.key}")
    for other in listed:
        if other.name == alias.stage:
            listed_value = getattr(other.cfg, alias.option)
            if listed_value != getattr(stage.cfg, alias.option):
                raise ConfigError(f"algo.{alias.key}={value} but algo.{alias.kind} gives {alias.stage} "
                                  f"{alias.option}={listed_value}; drop one of the two")
            return None
    return stage
