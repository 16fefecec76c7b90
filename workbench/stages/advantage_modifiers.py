"""Advantage modifiers: transform the estimator's advantages for the whole batch, after its
optional batch normalisation (``algo.advantage_modifiers``, applied in order).

Signature: ``fn(advantages [N, T], batch: Batch, cfg) -> advantages [N, T]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.batch import Batch
from workbench.registry import ConfigError
from workbench.stages.base import ADVANTAGE_MODIFIERS


@dataclass
class ClipConfig:
    bound: float = 5.0  # advantages are clamped to [-bound, bound] (5 in DDPO and Flow-GRPO); alias algo.advantage_clip

    def __post_init__(self) -> None:
        if not self.bound > 0:
            raise ConfigError(f"bound must be > 0, got {self.bound}")


@ADVANTAGE_MODIFIERS.register("clip", config=ClipConfig)
def clip_advantages(advantages: torch.Tensor, batch: Batch, cfg: ClipConfig) -> torch.Tensor:
    """Clamp advantages to [-bound, bound] (Black et al. 2023, "Training Diffusion Models with
    Reinforcement Learning" (DDPO); Liu et al. 2025, Flow-GRPO): one outlier reward cannot
    dominate an update."""
    return advantages.clamp(-cfg.bound, cfg.bound)
