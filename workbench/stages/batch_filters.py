"""Batch filters: choose which groups of a collected batch are trained on. A filter that needs
more samples runs inside a collector (its rounds of sampling): DAPO dynamic sampling is driven
by the token collector (``workbench.rollout.tokens.collect_varied_groups``, ``env.dynamic_sampling``).

Signature: ``fn(scores [N], group [N], cfg) -> [K] long``: the ids of the groups that pass
(ascending), from each row's total reward and group id. The caller keeps the first ones it
still needs and gathers kept groups over sampling rounds until it has enough or ``cfg.max_rounds`` rounds
were sampled: a filter's config dataclass subclasses :class:`RoundsConfig`. Chosen with
``env.batch_filter={name: ..., <options>}`` in an env whose collector samples in rounds (text).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.registry import ConfigError
from workbench.stages.base import BATCH_FILTERS

# a group whose rewards span no more than this counts as "all equal"
EQUAL_REWARDS_ATOL = 1e-6


def varying_groups(scores: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[K] long, ascending: the ids of the groups whose ``scores`` [N] are not all equal
    (max - min > ``EQUAL_REWARDS_ATOL``); ``group`` [N] long holds each row's group id."""
    ids, inverse = torch.unique(group, return_inverse=True)
    start = scores.new_zeros(ids.numel())
    high = start.scatter_reduce(0, inverse, scores, "amax", include_self=False)
    low = start.scatter_reduce(0, inverse, scores, "amin", include_self=False)
    return ids[(high - low) > EQUAL_REWARDS_ATOL]


@dataclass
class RoundsConfig:
    """The options every batch filter has (its config dataclass subclasses this one)."""

    max_rounds: int = 4  # sampling rounds before the batch is trained with the groups kept so far

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be >= 1, got {self.max_rounds}")


@dataclass
class DynamicSamplingConfig(RoundsConfig):
    pass


@BATCH_FILTERS.register("dynamic_sampling", config=DynamicSamplingConfig)
def dynamic_sampling(scores: torch.Tensor, group: torch.Tensor, cfg: DynamicSamplingConfig) -> torch.Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning
    System at Scale", sec. 3.2; verl ``filter_groups``): a group whose rewards are all equal
    has zero group-relative advantage and gives no gradient, so only groups whose rewards
    differ pass. The caller samples up to ``max_rounds`` rounds of new groups to fill the batch
    (surplus groups beyond the batch are discarded, the first ones by group id kept)."""
    return varying_groups(scores, group)
