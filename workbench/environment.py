"""The environment-adapter interface the trainer sees.

An adapter owns everything modality-specific about data: it collects trajectories with a
policy into a ``Batch`` (``collect``), applies its reward (``score``: verifiers, learned
rewards, reward normalisation), evaluates a policy, and saves/restores its own state so a
resumed run continues exactly. Adapters live in ``envs/`` and register with ``ENVS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from workbench.batch import Batch


@dataclass
class EnvSpec:
    """What a policy needs to know to build itself for an env."""

    observation_shape: Tuple[int, ...]
    action_dim: int
    action_low: Optional[Any] = None
    action_high: Optional[Any] = None
    observation_space: Optional[Any] = None  # the env's own (gymnasium) space, e.g. a Dict of "pixels" and "state"


class Environment:
    """Base class for adapters. ``steps_per_collect`` counts the env steps (or samples) one
    ``collect`` adds to the run's step counter."""

    steps_per_collect: int = 0

    def spec(self) -> EnvSpec:  # pragma: no cover - interface
        raise NotImplementedError

    def collect(self, policy) -> Batch:  # pragma: no cover - interface
        raise NotImplementedError

    def attach(self, run_dir) -> None:
        """Called by the trainer with the run directory, for envs that write files there
        (image grids, videos). Default: nothing."""

    def score(self, batch: Batch) -> Batch:
        """Apply the adapter's reward pipeline to raw collected rewards (default: as is)."""
        return batch

    def pop_metrics(self) -> Dict[str, float]:
        """Metrics gathered since the last call (episode returns, accuracies, ...)."""
        return {}

    def evaluate(self, policy, episodes: int, video_path: Optional[str] = None) -> Dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
