"""Benchmarks: ``workbench bench NAME [--json]``. Each compares against a peer side by side on
the same machine and, with ``--json``, ends with one JSON line of its figures including
``"ratio"`` (ours over the peer, higher is better).

The engine's own benchmarks register below; a benchmark that needs an env lives with the env
and registers when the ``workbench.plugins`` entry points are imported (PPO vs SB3 on MuJoCo tasks:
``envs/mujoco_bench.py``; the RAPL benchmarks on Franka Push: ``envs/franka_rapl``), so :func:`run_benchmark` loads the plugins first."""
from __future__ import annotations

import json
from typing import List

from workbench.registry import BENCHMARKS
from workbench.bench import ddpo, demos, grpo_text  # noqa: F401


def run_benchmark(name: str, as_json: bool, rest: List[str]) -> int:
    from workbench import plugins

    plugins.load()
    figures = BENCHMARKS.get(name)(rest)
    if as_json:
        print(json.dumps(figures))
    return 0
