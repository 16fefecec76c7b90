"""Objectives: small pure functions of [N, T] tensors, registered by name.

The full loss is ``policy_loss + vf_coef * value_loss - ent_coef * entropy + beta * kl``,
each term aggregated over the mask with ``loss_agg_mode``. Option names follow TRL/verl:
``epsilon``, ``epsilon_high``, ``dual_clip``, ``importance_sampling_level``, ``beta``,
``kl_estimator``, ``loss_agg_mode``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from workbench.batch import Minibatch
from workbench.registry import ConfigError, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES


@dataclass
class PolicyOutput:
    """What ``policy.evaluate`` returns for a minibatch; all tensors [M, T] like its mask."""

    logp: torch.Tensor
    entropy: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
    ref_logp: Optional[torch.Tensor] = None  # token policies: KL by k1/k2/k3 estimators
    kl: Optional[torch.Tensor] = None  # exact per-step KL where closed form exists (Gaussian steps)


# ---------------------------------------------------------------- aggregation

@LOSS_AGGREGATIONS.register("token-mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: Optional[float] = None) -> torch.Tensor:
    """Mean over all valid steps of the minibatch (DAPO / BNPO)."""
    return (loss * mask).sum() / mask.sum().clamp(min=1)


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: Optional[float] = None) -> torch.Tensor:
    """Mean over rows of the per-row mean (original GRPO); empty rows are skipped."""
    counts = mask.sum(dim=1)
    rows = counts > 0
    per_row = (loss * mask).sum(dim=1)[rows] / counts[rows]
    return per_row.mean() if per_row.numel() else loss.sum() * 0.0


@LOSS_AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, norm: Optional[float] = None) -> torch.Tensor:
    """Mean over rows of the per-row sum."""
    return (loss * mask).sum(dim=1).mean()


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, norm: Optional[float] = None) -> torch.Tensor:
    """Sum over valid steps divided by rows x a constant (Dr.GRPO: the max generation length).

    ``norm`` defaults to T, the padded length of the minibatch.
    """
    constant = float(norm) if norm else float(mask.shape[1])
    return (loss * mask).sum() / (mask.shape[0] * constant)


# ---------------------------------------------------------------- ratios and policy losses

def log_ratio(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """[M, T] log importance ratio, per token or per sequence (GSPO, Zheng et al. 2025).

    The sequence ratio is the length-normalised mean of token log-ratios; it is applied to each
    token as ``sg[s] + logp - sg[logp]`` so gradients still flow per token.
    """
    lr = logp - logp_old
    if level == "token":
        return lr
    if level == "sequence":
        seq = (lr * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
        return seq.detach() + logp - logp.detach()
    raise ConfigError(f"unknown importance_sampling_level '{level}'; valid choices: sequence, token")


@POLICY_LOSSES.register("clip")
def clipped_surrogate(
    log_ratio: torch.Tensor,  # [M, T]
    advantages: torch.Tensor,  # [M, T]
    epsilon: float,
    epsilon_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate, per step. Returns (loss [M, T], clipped indicator [M, T]).

    Asymmetric clip (DAPO clip-higher): ratio in [1 - epsilon, 1 + epsilon_high].
    Dual clip (Ye et al. 2020): for negative advantages the loss is capped at -c * A.
    """
    ratio = torch.exp(log_ratio)
    high = epsilon if epsilon_high is None else epsilon_high
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - epsilon, 1.0 + high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipped = (loss_clipped > loss_unclipped).float()
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ConfigError(f"dual_clip must be > 1, got {dual_clip}")
        capped = torch.minimum(loss, -advantages * dual_clip)
        loss = torch.where(advantages < 0, capped, loss)
    return loss, clipped


# ---------------------------------------------------------------- KL estimators (Schulman's k1/k2/k3)

@KL_ESTIMATORS.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Unbiased, non-negative estimator of KL(pi || ref): exp(r) - r - 1 with r = ref - logp."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


# ---------------------------------------------------------------- value loss

def value_loss(values: torch.Tensor, values_old: Optional[torch.Tensor], returns: torch.Tensor, clip: Optional[float]) -> torch.Tensor:
    """[M, T] 0.5 * squared error; with ``clip`` the PPO clipped form max(unclipped, clipped)."""
    unclipped = (values - returns) ** 2
    if clip is None or values_old is None:
        return 0.5 * unclipped
    clipped_values = values_old + torch.clamp(values - values_old, -clip, clip)
    return 0.5 * torch.maximum(unclipped, (clipped_values - returns) ** 2)


# ---------------------------------------------------------------- the full objective

def objective(out: PolicyOutput, mb: Minibatch, cfg) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The PPO/GRPO family loss for one minibatch, with metrics (detached scalars)."""
    aggregate = LOSS_AGGREGATIONS.get(cfg.loss_agg_mode)
    mask = mb.mask
    lr = log_ratio(out.logp, mb.logp_old, mask, cfg.importance_sampling_level)
    pg, clipped = POLICY_LOSSES.get(cfg.policy_loss)(lr, mb.advantages, cfg.epsilon, cfg.epsilon_high, cfg.dual_clip)
    loss = aggregate(pg, mask, cfg.loss_agg_norm)
    metrics: Dict[str, torch.Tensor] = {"loss/policy": loss.detach()}

    if cfg.vf_coef > 0 and out.values is not None:
        if mb.returns is None:
            raise ConfigError(f"vf_coef > 0 but advantage '{cfg.advantage}' makes no value targets; set algo.vf_coef=0")
        vl = aggregate(value_loss(out.values, mb.values_old, mb.returns, cfg.value_clip), mask, cfg.loss_agg_norm)
        loss = loss + cfg.vf_coef * vl
        metrics["loss/value"] = vl.detach()
    if out.entropy is not None:
        ent = aggregate(out.entropy, mask, cfg.loss_agg_norm)
        if cfg.ent_coef != 0:
            loss = loss - cfg.ent_coef * ent
        metrics["policy/entropy"] = ent.detach()
    if cfg.beta > 0:
        ref_logp = out.ref_logp if out.ref_logp is not None else mb.ref_logp
        if out.kl is not None:
            kl = out.kl
        elif ref_logp is not None:
            kl = KL_ESTIMATORS.get(cfg.kl_estimator)(out.logp, ref_logp)
        else:
            raise ConfigError("algo.beta > 0 but there is no reference: set policy.reference (frozen or lora_base) or algo.beta=0")
        kl_term = aggregate(kl, mask, cfg.loss_agg_norm)
        loss = loss + cfg.beta * kl_term
        metrics["loss/kl_ref"] = kl_term.detach()

    with torch.no_grad():
        token_lr = out.logp - mb.logp_old
        n = mask.sum().clamp(min=1)
        # approx KL(old || new) by k3, as CleanRL/SB3 log it for target_kl
        metrics["policy/approx_kl"] = (((torch.exp(token_lr) - 1) - token_lr) * mask).sum() / n
        metrics["policy/clip_frac"] = (clipped * mask).sum() / n
    return loss, metrics
