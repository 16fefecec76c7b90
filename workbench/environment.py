"""The environment-adapter interface the trainer sees.

An adapter owns everything modality-specific about data: it collects trajectories with a
policy into a ``Batch`` (``collect``), applies its reward (``assign_rewards``: verifiers, learned
rewards, reward normalisation), evaluates a policy, and saves/restores its own state so a
resumed run continues exactly. Adapters live in ``envs/`` and register with ``ENVS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from workbench.batch import Batch


@dataclass
class EnvSpec:
    """The spaces of a control env, from which a control policy builds its layers."""

    observation_shape: Tuple[int, ...]
    action_dim: int
    action_low: Optional[Any] = None
    action_high: Optional[Any] = None
    observation_space: Optional[Any] = None  # the env's own (gymnasium) space, e.g. a Dict of "pixels" and "state"


@dataclass(frozen=True)
class Headline:
    """One figure a run is judged by. The CLI's final line, the progress line and a panel of
    learning_curve.png show it, so the engine never guesses from metric names."""

    label: str  # what it is called in lines and panel titles: "return", "accuracy", "JPEG size (kB)"
    key: str  # the evaluation metric: "eval/return_mean"
    train_key: Optional[str] = None  # the same quantity on training samples ("episode/return"); None: not logged
    spread: Optional[str] = None  # the metric holding its standard deviation ("eval/return_std"); None: none
    higher_is_better: bool = True
    fmt: str = ".3g"  # format spec of its values: ",.1f", ".0%"


RETURN = Headline("return", "eval/return_mean", "episode/return", spread="eval/return_std", fmt=",.1f")


@dataclass(frozen=True)
class EnvDisplay:
    """What an env declares about itself for the CLI, the run log and the plots: they follow
    this instead of probing attributes or branching on metric names."""

    name: str  # the plot title's subject: the gym id, the text task, the image reward
    headline: Tuple[Headline, ...] = (RETURN,)  # in order of importance; a figure missing from the metrics is skipped
    renders: bool = False  # evaluate(video_path=...) writes a video of an episode
    evaluation: str = ""  # how evaluate acts, for labels: "greedy", "deterministic", "fixed noise"
    eval_unit: str = "episodes"  # what eval/episodes counts
    step_unit: str = "env steps"  # what the run's step counter counts
    pass_at_k: bool = False  # evaluate(k=...) also samples k answers per item (eval/mean@k, eval/pass@j)


class Environment:
    """Base class for adapters. ``steps_per_collect`` counts the env steps (or samples) one
    ``collect`` adds to the run's step counter; ``policy_contract`` is the acting contract
    (``workbench.policies.base``) a policy must fulfil to act here, checked at start-up."""

    steps_per_collect: int = 0
    policy_contract: Optional[type] = None  # e.g. ControlActor; None: any policy
    has_demonstrations: bool = False  # demonstrations(n) -> (prompts, targets) for supervised warm-start (sft)
    has_step_limit: bool = False  # its batches carry Batch.max_steps, a generation limit per row (text)

    def spec(self) -> Optional[EnvSpec]:
        """Observation and action spaces, for envs whose policies build their layers from them
        (control); None where the policy needs nothing from the env (tokens, denoising)."""
        return None

    def collect(self, policy) -> Batch:  # pragma: no cover - interface
        raise NotImplementedError

    def attach(self, run_dir) -> None:
        """Called by the trainer with the run directory, for envs that write files there
        (image grids, videos). Default: nothing."""

    def assign_rewards(self, batch: Batch) -> Batch:
        """Apply the adapter's reward pipeline to raw collected rewards (default: as is)."""
        return batch

    def pop_metrics(self) -> Dict[str, float]:
        """Metrics gathered since the last call (episode returns, accuracies, ...)."""
        return {}

    def display(self) -> EnvDisplay:
        """How the CLI and run log present this env (default: return metrics, no video)."""
        return EnvDisplay(name=type(self).__name__)

    def evaluate(self, policy, episodes: int, video_path: Optional[str] = None,
                 seed: Optional[int] = None) -> Dict[str, float]:  # pragma: no cover - interface
        """Held-out evaluation: the metrics named by ``display().headline`` plus ``eval/episodes``.
        ``video_path``: where an env that renders writes a video; ``seed``: None = the env's own."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
