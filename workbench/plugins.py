"""Discovery of components outside the engine.

The engine never imports ``envs`` or ``robots``: packages announce their modules under the
``workbench.plugins`` entry-point group (this project's pyproject lists ``envs``), and a
config may name more modules in ``imports``. Importing a module registers what it defines.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Iterable

from workbench.registry import ConfigError

_loaded: set[str] = set()


def load(extra: Iterable[str] = ()) -> None:
    # the engine's own components register on import
    import workbench.advantages  # noqa: F401
    import workbench.objectives  # noqa: F401
    import workbench.policies  # noqa: F401
    import workbench.rewards  # noqa: F401
    import workbench.schedules  # noqa: F401

    modules = [ep.value for ep in entry_points(group="workbench.plugins")] + list(extra)
    for name in modules:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                raise ConfigError(f"cannot import plugin module '{name}' (named in imports or an entry point)") from None
            raise
        _loaded.add(name)
