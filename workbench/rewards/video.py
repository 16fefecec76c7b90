"""A learned reward on the video of each episode, put back on its steps (RAPL, arXiv 2310.07932).

RAPL (and its RLHF baseline) score a robot's video as a whole, e.g. by optimal transport
against a preferred demonstration, and return one reward per frame. In RL that reward is
computed after each rollout from the frames the env rendered and placed on the steps the
frames came from. ``VideoReward`` does that for any env that steps E parallel episodes and
renders them (today the gym_control adapter), with the rewards of one :class:`RewardPipeline`:

- frames: every ``frame_every``-th step's render (the state *before* that step's action), from
  the training envs themselves (``render_mode="rgb_array"``; size and camera from ``env.kwargs``);
- rewards: each video reward of the pipeline (``rapl``, ``rlhf_video``) gives
  ``frame_rewards(video)`` [n]; each frame's reward is spread evenly over the ``frame_every``
  steps it stands for, so an episode's learned return is the reward's score of its video;
- the step reward is ``sum_k weight_k * learned_k + env_weight * env reward`` (RAPL trains on
  the learned reward alone: ``env_weight`` 0). One reward: ``name`` / ``options`` / ``weight``;
  several: ``rewards: [{name, weight, **options}, ...]``.

The reward needs whole episodes, so every rollout must end on episode boundaries: rollout length
a multiple of the episode length and no early termination (fixed-length tasks such as the Franka
ones). A rollout that does not is refused with the fix named. A reward that raises on one
episode gives that episode's steps the env reward alone and is counted in ``reward/video_failures``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from workbench.registry import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class VideoRewardConfig:
    name: Optional[str] = None  # one registered video reward: rapl | rlhf_video; null (and no rewards) = off
    options: Dict[str, Any] = field(default_factory=dict)  # its options, e.g. {checkpoint: runs/rapl/rapl.safetensors}
    weight: float = 1.0  # weight of its learned per-step reward
    rewards: List[Dict[str, Any]] = field(default_factory=list)  # several: [{name, weight, **options}], instead of name
    env_weight: float = 0.0  # weight of the env's own reward (RAPL: 0, the learned reward alone)
    frame_every: int = 1  # render every k-th step; a frame's reward covers its k steps
    crop: int = 0  # centre-crop frames to crop x crop px (as the reward's training frames were); 0 = as rendered

    def __post_init__(self) -> None:
        from workbench.rewards.base import check_reward_specs

        if self.frame_every < 1 or self.crop < 0:
            raise ConfigError(f"env.video_reward.frame_every must be >= 1 and crop >= 0, got {self.frame_every}, {self.crop}")
        if self.name and self.rewards:
            raise ConfigError("env.video_reward: give one reward as name/options/weight or several as rewards, not both")
        if self.enabled:
            check_reward_specs(self.specs(), "env.video_reward.rewards" if self.rewards else "env.video_reward")

    @property
    def enabled(self) -> bool:
        return bool(self.name or self.rewards)

    def specs(self) -> List[Dict[str, Any]]:
        """The reward specs of the pipeline (``{name, weight, **options}``)."""
        if self.name:
            return [{**dict(self.options), "name": self.name, "weight": self.weight}]
        return [dict(r) for r in self.rewards]


class VideoReward:
    """Builds the reward once; ``__call__`` turns one rollout's frames into step rewards."""

    def __init__(self, cfg: VideoRewardConfig) -> None:
        from workbench.rewards.base import RewardPipeline

        self.cfg = cfg
        self.pipeline = RewardPipeline(cfg.specs())
        self.pipeline.require_frame_rewards("env.video_reward")

    def wants_frame(self, t: int) -> bool:
        return t % self.cfg.frame_every == 0

    def __call__(self, frames: List[np.ndarray], env_rewards: np.ndarray, dones: np.ndarray) -> tuple:
        """(step rewards [T, E], metrics) from the rollout's frames (list over rendered steps of
        [E, H, W, 3] uint8), the env's rewards [T, E] and episode ends [T, E] (bool)."""
        T, E = env_rewards.shape
        k = self.cfg.frame_every
        if not dones[-1].all():
            raise ConfigError("env.video_reward needs whole episodes in every rollout: set env.rollout_steps to a multiple "
                              "of the episode length (max_episode_steps) and keep early termination off")
        video = np.stack(frames, axis=1)  # [E, ceil(T / k), H, W, 3]
        if self.cfg.crop:
            H, W = video.shape[2:4]
            top, left = (H - self.cfg.crop) // 2, (W - self.cfg.crop) // 2
            video = video[:, :, top:top + self.cfg.crop, left:left + self.cfg.crop]
        weights = self.pipeline.weights
        learned = np.zeros((T, E))  # sum_k weight_k * learned_k
        failed = np.zeros((T, E), dtype=bool)
        returns, failures = [], 0
        for e in range(E):
            start = 0
            for end in np.flatnonzero(dones[:, e]) + 1:  # one episode: steps [start, end)
                first = -(-start // k)  # rendered steps inside the episode: multiples of k
                idx = np.arange(first, -(-end // k))
                try:
                    per_reward = self.pipeline.frame_rewards(video[e, idx])
                except Exception as err:  # noqa: BLE001 - one bad episode must not stop the run
                    failures += 1
                    logger.warning("video reward failed on an episode (%s): %s; its steps keep the env reward", type(err).__name__, err)
                    failed[start:end, e] = True
                    start = end
                    continue
                steps = np.arange(start, end)
                frame = np.maximum(steps // k - first, 0)  # steps before the first render share its frame
                share = np.bincount(frame)[frame]  # how many steps each frame's reward is spread over
                for key, r in per_reward.items():
                    learned[steps, e] += weights[key] * (r[frame] / share)
                returns.append(float(sum(r.sum() for r in per_reward.values())))
                start = end
        step_rewards = np.where(failed, env_rewards, learned + self.cfg.env_weight * env_rewards)
        metrics = {"reward/video_failures": float(failures)}
        if returns:
            metrics["reward/video_return"] = float(np.mean(returns))
        return step_rewards, metrics
