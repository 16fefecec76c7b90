"""Reward shapers: a per-row reward term computed from the collected batch, added to the
env's reward of each row (``algo.reward_shapers``).

Signature: ``fn(batch: Batch, cfg) -> [N] float64`` the term of each row. The trainer calls
:func:`shape_rewards` after the env's rewards: each term lands on its row's last valid step
(where a terminal reward sits), and its mean is logged as ``reward/<stage name>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from workbench.batch import Batch
from workbench.registry import ConfigError
from workbench.stages.base import REWARD_SHAPERS


def soft_overlong_punishment(lengths: List[int], max_length: int, buffer: int, penalty: float = 1.0) -> List[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025, sec. 3.4) of completion lengths |y|:
    0 for |y| <= L_max - L_cache, ((L_max - L_cache) - |y|) / L_cache * penalty up to L_max,
    -penalty beyond. ``max_length`` = L_max, ``buffer`` = L_cache (0: all zeros)."""
    if buffer <= 0:
        return [0.0] * len(lengths)
    start = max_length - buffer
    out = []
    for n in lengths:
        if n <= start:
            out.append(0.0)
        elif n <= max_length:
            out.append((start - n) / buffer * penalty)
        else:
            out.append(-float(penalty))
    return out


@dataclass
class OverlongConfig:
    buffer: int = 4096  # L_cache in steps (tokens): punished lengths start at L_max - buffer (DAPO: 4096 of 20480)
    penalty: float = 1.0  # the punishment at L_max (DAPO: 1.0)

    def __post_init__(self) -> None:
        if self.buffer < 1 or not self.penalty >= 0:
            raise ConfigError(f"buffer must be >= 1 and penalty >= 0, got buffer={self.buffer}, penalty={self.penalty}")


@REWARD_SHAPERS.register("overlong", config=OverlongConfig)
def overlong(batch: Batch, cfg: OverlongConfig) -> torch.Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement
    Learning System at Scale", sec. 3.4): completions that run into the last ``buffer`` steps
    of the generation limit lose up to ``penalty``, linearly in their length.

    |y| is each row's valid steps (``batch.mask`` row sums, the EOS included) and L_max the
    batch's generation limit (``batch.max_steps``).
    """
    if batch.max_steps is None:
        raise ConfigError("reward shaper overlong needs a generation limit (Batch.max_steps), which this env does not declare")
    if cfg.buffer > batch.max_steps:
        raise ConfigError(f"reward shaper overlong: buffer={cfg.buffer} exceeds the generation limit {batch.max_steps}")
    lengths = batch.mask.sum(1).long().tolist()
    punishment = soft_overlong_punishment(lengths, int(batch.max_steps), cfg.buffer, cfg.penalty)
    return torch.tensor(punishment, dtype=torch.float64, device=batch.mask.device)


overlong.needs_step_limit = True  # checked at start-up against the env's has_step_limit


def shape_rewards(batch: Batch, shapers: Sequence) -> Tuple[Batch, Dict[str, float]]:
    """The batch with every shaper's per-row term added on the row's last valid step, and the
    mean term of each (``reward/<name>``)."""
    if not shapers:
        return batch, {}
    last = (torch.arange(batch.num_steps, device=batch.mask.device) * batch.mask).argmax(1)
    rows = torch.arange(batch.num_rows, device=batch.mask.device)
    rewards = batch.rewards.clone()
    metrics: Dict[str, float] = {}
    for shaper in shapers:
        term = shaper(batch)
        rewards[rows, last] += term.to(rewards.dtype)
        metrics[f"reward/{shaper.name}"] = float(term.mean())
    return batch.with_(rewards=rewards), metrics
