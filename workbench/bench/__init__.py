"""Benchmarks: ``workbench bench NAME [--json]``. Each compares against a peer side by side on
the same machine and, with ``--json``, ends with one JSON line of its figures including
``"ratio"`` (ours over the peer, higher is better)."""
from __future__ import annotations

import json
from typing import List

from workbench.registry import BENCHMARKS
from workbench.bench import ddpo, demos, grpo_text  # noqa: F401
from workbench.bench import ppo_mujoco  # noqa: F401
from workbench.bench import rapl_align, rapl_franka  # noqa: F401


def run_benchmark(name: str, as_json: bool, rest: List[str]) -> int:
    figures = BENCHMARKS.get(name)(rest)
    if as_json:
        print(json.dumps(figures))
    return 0
