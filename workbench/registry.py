"""Name -> object registries, so every algorithm piece, env and policy is chosen by config.

An advantage estimator, objective piece, env adapter or policy registers itself under a
name with a decorator (verl's ``@register_adv_est`` pattern). Config values name them; an
unknown name fails with one line that lists the valid choices.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in configuration: printed as one line, never as a traceback."""


class Registry(Generic[T]):
    """A named collection of components of one kind (e.g. ``advantage``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; valid choices: {', '.join(sorted(self._items)) or '(none)'}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


ADVANTAGES: Registry[Callable] = Registry("advantage estimator")
POLICY_LOSSES: Registry[Callable] = Registry("policy loss")
KL_ESTIMATORS: Registry[Callable] = Registry("kl estimator")
LOSS_AGGREGATIONS: Registry[Callable] = Registry("loss aggregation mode")
LR_SCHEDULES: Registry[Callable] = Registry("lr schedule")
ENVS: Registry[type] = Registry("env")
POLICIES: Registry[type] = Registry("policy")
REWARDS: Registry[Callable] = Registry("reward")
BENCHMARKS: Registry[Callable] = Registry("benchmark")

ALL = {
    "envs": ENVS,
    "policies": POLICIES,
    "advantages": ADVANTAGES,
    "policy_losses": POLICY_LOSSES,
    "kl_estimators": KL_ESTIMATORS,
    "loss_aggregations": LOSS_AGGREGATIONS,
    "lr_schedules": LR_SCHEDULES,
    "rewards": REWARDS,
    "benchmarks": BENCHMARKS,
}


def add_registry(kind: str, registry: Registry) -> Registry:
    """Let a plugin list its own registry (e.g. text tasks) in ``workbench list``."""
    ALL.setdefault(kind, registry)
    return registry
