"""Declared config fields: choices and reward-spec lists, checked the same way everywhere.

Config dataclasses of the engine, the policies and the envs declare their fields here (no
import of the config composer, which loads every plugin), and :mod:`workbench.config`
validates them all with one message form.
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from workbench.registry import ConfigError, Registry


def choice(*choices: Any, registry: Optional[Registry] = None) -> Any:
    """A config field whose value must be one of ``choices`` (the first is the default), or a
    name in ``registry`` (then the only positional is the default).

    OmegaConf structured configs cannot type a field as ``Literal[...]``, so the field stays a
    plain ``str`` and the choices live in its metadata, where :func:`check_choices` finds them.
    ``None`` is valid only when listed (shown as ``null``); an entry with a ``<placeholder>``
    (``"timm:<model name>"``) accepts any value that starts with the text before it.
    """
    if not choices:
        raise TypeError("choice() needs a default")
    meta = {"registry": registry} if registry is not None else {"choices": tuple(dict.fromkeys(choices))}
    return field(default=choices[0], metadata=meta)


def valid_choices(f: dataclasses.Field) -> Optional[List[Any]]:
    """The values a field declared with :func:`choice` accepts (None: any value)."""
    if "registry" in f.metadata:
        return [*f.metadata["registry"].names(), *([None] if f.default is None else [])]
    return list(f.metadata["choices"]) if "choices" in f.metadata else None


def _accepts(choices: List[Any], value: Any) -> bool:
    for c in choices:
        if isinstance(c, str) and "<" in c:
            prefix = c.split("<", 1)[0]
            if isinstance(value, str) and value.startswith(prefix) and len(value) > len(prefix):
                return True
        elif value == c:
            return True
    return False


def check_choices(config: Any, section: str) -> None:
    """Refuse, with one line, any field of the dataclass ``config`` (nested dataclasses too)
    whose value is not one of its declared choices. ``section`` prefixes the key (``algo``)."""
    for path, f, value in config_fields(config, section):
        choices = valid_choices(f)
        if choices is not None and not _accepts(choices, value):
            raise invalid_choice(path, value, choices)


def invalid_choice(key: str, value: Any, choices: Sequence[Any]) -> ConfigError:
    """The one message of a value outside its choices (``None`` is listed last, as ``null``)."""
    shown = ", ".join([str(c) for c in choices if c is not None] + (["null"] if None in choices else []))
    return ConfigError(f"{key}={value!r} is not valid; valid choices: {shown}")


def config_fields(config: Any, section: str) -> Iterator[Tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, value) of every field of a dataclass tree, parents before children."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{section}.{f.name}" if section else f.name
        yield path, f, value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from config_fields(value, path)


def reward_specs(*defaults: Dict[str, Any]) -> Any:
    """A config field holding a list of reward specs (``{name, weight, **options}``, see
    :class:`workbench.rewards.base.RewardPipeline`), checked by :func:`validate` at start-up."""
    return field(default_factory=lambda: [dict(d) for d in defaults], metadata={"reward_specs": True})
