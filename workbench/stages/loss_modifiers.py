"""Loss modifiers: reweight or mask the per-step policy loss inside the objective, before it is
aggregated over the mask (``algo.loss_modifiers``, applied in order).

Signature: ``fn(pg [M, T], out: PolicyOutput, mb: Minibatch, cfg) -> (pg [M, T], metrics)``,
where ``pg`` is the policy loss per step and ``metrics`` a dict of detached scalars to log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from workbench.batch import Minibatch, PolicyOutput
from workbench.registry import ConfigError
from workbench.stages.base import LOSS_MODIFIERS

Modified = Tuple[torch.Tensor, Dict[str, torch.Tensor]]


@dataclass
class TISConfig:
    cap: float = 2.0  # the weight's upper bound (Yao et al. use 2; 2-3 is common); alias algo.tis_cap

    def __post_init__(self) -> None:
        if not self.cap > 0:
            raise ConfigError(f"cap must be > 0, got {self.cap}")


@LOSS_MODIFIERS.register("tis", config=TISConfig)
def truncated_importance_sampling(pg: torch.Tensor, out: PolicyOutput, mb: Minibatch, cfg: TISConfig) -> Modified:
    """Truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework Secretly
    Brings You Off-Policy RL Training"): the sampler (vLLM, an EAD temperature) is not exactly
    the trained model, so each step's loss is weighted by min(pi_old / pi_sampler, cap).

    Rows without sampler log-probs (``mb.rollout_logp`` None: the trained model sampled) are
    left as they are. Logs ``policy/tis_weight``, the mean weight over the mask.
    """
    if mb.rollout_logp is None:
        return pg, {}
    weight = torch.clamp(torch.exp(mb.logp_old - mb.rollout_logp), max=cfg.cap)
    mean_weight = ((weight * mb.mask).sum() / mb.mask.sum().clamp(min=1)).detach()
    return pg * weight, {"policy/tis_weight": mean_weight}


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """[M, T] 1 for valid tokens whose entropy is in the top ``quantile`` fraction (Wang et al.
    2025, "high-entropy minority tokens"; TRL ``top_entropy_quantile``), 0 elsewhere."""
    if quantile >= 1.0:
        return mask
    valid = entropy.detach()[mask > 0]
    if valid.numel() == 0:
        return mask
    threshold = torch.quantile(valid.float(), 1.0 - quantile)
    return mask * (entropy.detach() >= threshold).float()


@dataclass
class TopEntropyConfig:
    quantile: float = 0.2  # share of the minibatch's valid tokens trained on (0.2 in the paper); alias algo.top_entropy_quantile

    def __post_init__(self) -> None:
        if not 0 < self.quantile <= 1:
            raise ConfigError(f"quantile must lie in (0, 1], got {self.quantile}")


@LOSS_MODIFIERS.register("top_entropy", config=TopEntropyConfig)
def top_entropy_tokens(pg: torch.Tensor, out: PolicyOutput, mb: Minibatch, cfg: TopEntropyConfig) -> Modified:
    """Train only on the highest-entropy tokens (Wang et al. 2025, "Beyond the 80/20 Rule:
    High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM Reasoning"):
    the loss of every token below the minibatch's ``1 - quantile`` entropy quantile is zeroed."""
    if out.entropy is None:
        raise ConfigError("loss modifier top_entropy (algo.top_entropy_quantile < 1) needs a policy that returns "
                          "per-token entropy")
    return pg * high_entropy_mask(out.entropy, mb.mask, cfg.quantile), {}
