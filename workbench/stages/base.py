"""The stage framework: one registry per stage kind, a config dataclass per stage, and the one
generic check that turns a config entry ``{name: tis, cap: 2.0}`` into a callable stage.

A stage is a pure function whose last argument is its own config dataclass. It registers
with ``@KIND.register(name, config=ItsConfig)``; the dataclass's defaults are the paper's
settings and its ``__post_init__`` checks the values (raising ``ConfigError`` with a short
reason). Every check of an entry's shape, name and option names lives here, once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from workbench.registry import ConfigError, Registry, add_registry


@dataclass(frozen=True)
class Stage:
    """One configured stage: its registered function with its validated options bound last."""

    name: str
    fn: Callable
    cfg: Any  # the stage's config dataclass instance

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args, self.cfg)


class StageRegistry(Registry[Callable]):
    """The stages of one kind; each entry is a function with its config dataclass as ``fn.Config``."""

    def register(self, name: str, *, config: type) -> Callable[[Callable], Callable]:  # type: ignore[override]
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"{self.kind} '{name}' must register with config=<its config dataclass>")

        def decorator(fn: Callable) -> Callable:
            fn.Config = config
            return Registry.register(self, name)(fn)

        return decorator

    def build(self, entry: Any, where: str) -> Stage:
        """The stage a config entry ``{name: ..., <option>: value}`` names; ``where`` is the
        entry's config path for the one-line error (e.g. ``algo.loss_modifiers[0]``)."""
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where} must be a mapping like {{name: <{self.kind}>, <option>: value}}; "
                              f"valid names: {', '.join(self.names()) or '(none)'}, got {entry!r}")
        name = entry["name"]
        try:
            fn = self.get(name)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        options = {k: v for k, v in entry.items() if k != "name"}
        valid = [f.name for f in dataclasses.fields(fn.Config)]
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise ConfigError(f"{where}: {self.kind} '{name}' has no option '{unknown[0]}'; "
                              f"valid options: {', '.join(valid) or '(none)'}")
        return Stage(name, fn, self._config(fn.Config, options, f"{where}: {self.kind} '{name}'"))

    @staticmethod
    def _config(schema: type, options: Mapping[str, Any], where: str) -> Any:
        """The typed config dataclass (ints widen to float fields; a wrong type is one line)."""
        try:
            typed = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), dict(options)))
        except OmegaConfBaseException as e:
            raise ConfigError(f"{where}: bad value for '{getattr(e, 'key', None)}': {str(e).splitlines()[0]}") from None
        try:
            return schema(**typed)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _stage_registry(kind: str, label: str) -> StageRegistry:
    return add_registry(kind, StageRegistry(label))  # type: ignore[return-value]


LOSS_MODIFIERS = _stage_registry("loss_modifiers", "loss modifier")
ADVANTAGE_MODIFIERS = _stage_registry("advantage_modifiers", "advantage modifier")
REWARD_SHAPERS = _stage_registry("reward_shapers", "reward shaper")
BATCH_FILTERS = _stage_registry("batch_filters", "batch filter")
STEP_SELECTORS = _stage_registry("step_selectors", "step selector")
