"""Objectives: small pure functions of [N, T] tensors, registered by name.

The full loss is ``policy_loss + vf_coef * value_loss - ent_coef * entropy + beta * kl``,
each term aggregated over the mask with ``loss_agg_mode``. The configured loss modifiers
(``algo.loss_modifiers``: TIS, top-entropy tokens; :mod:`workbench.stages.loss_modifiers`)
reweight the per-step policy loss before it is aggregated. Option names follow TRL/verl:
``epsilon``, ``epsilon_high``, ``dual_clip``, ``importance_sampling_level``, ``beta``,
``kl_estimator``, ``loss_agg_mode``.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple

import torch

from workbench.batch import Minibatch, PolicyOutput  # noqa: F401  (PolicyOutput: re-exported)
from workbench.registry import ConfigError, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES
from workbench.stages.loss_modifiers import high_entropy_mask  # noqa: F401  (re-exported: moved to a stage)


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

    ``norm`` must be given: the objective passes ``algo.loss_agg_norm`` or else the env's
    ``max_steps``. The padded width T is no constant (it changes with every minibatch), so it is
    never used in its place.
    """
    if not norm:
        raise ConfigError("loss_agg_mode=seq-mean-token-sum-norm needs a constant: set algo.loss_agg_norm "
                          "(this env declares no max steps per row)")
    return (loss * mask).sum() / (mask.shape[0] * float(norm))


# ---------------------------------------------------------------- ratios and policy losses

def log_ratio(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """[M, T] log importance ratio, per token or per sequence (GSPO, Zheng et al. 2025).

    The sequence ratio is the length-normalised mean of token log-ratios; it is applied to each
    token as ``sg[s] + logp - sg[logp]`` so gradients still flow per token.
    """
    token_log_ratio = logp - logp_old
    if level == "token":
        return token_log_ratio
    if level == "sequence":
        seq = (token_log_ratio * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
        return seq.detach() + logp - logp.detach()
    raise ConfigError(f"unknown importance_sampling_level '{level}'; valid choices: sequence, token")


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


# Registered policy losses share one signature: fn(log_ratio [M, T], advantages [M, T], cfg)
# -> (per-step loss [M, T], clipped indicator [M, T]); ``cfg`` is the AlgoConfig.

@POLICY_LOSSES.register("clip")
def clip_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, cfg) -> Tuple[torch.Tensor, torch.Tensor]:
    """PPO / GRPO / DAPO clipped surrogate (``epsilon``, ``epsilon_high``, ``dual_clip``)."""
    return clipped_surrogate(log_ratio, advantages, cfg.epsilon, cfg.epsilon_high, cfg.dual_clip)


@POLICY_LOSSES.register("cispo")
def cispo_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, cfg) -> Tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, 2025): REINFORCE with a clipped, stop-gradient importance weight.

    loss = -sg(min(r, cispo_cap)) * A * log r. Every token keeps a gradient; only the weight
    is capped. The cap has its own option (``cispo_cap`` = 1 + MiniMax-M1's eps_high^IS, > 1,
    default 5.0 as TRL/ScaleRL recommend) rather than TRL's reuse of ``epsilon_high``, so a
    DAPO-style ``epsilon_high=0.28`` left in a config cannot cap every weight at 0.28.
    ``log r`` stands in for ``log pi``: they differ by the constant ``log pi_old``, so the
    gradient is the same.
    """
    cap = cfg.cispo_cap
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, max=cap).detach()
    return -weight * advantages * log_ratio, (ratio > cap).float()


@POLICY_LOSSES.register("dispo")
def dispo_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, cfg) -> Tuple[torch.Tensor, torch.Tensor]:
    """DISPO (2025): REINFORCE-style with four clip bounds, up/down x correct/incorrect.

    Tokens of correct responses (A > 0) use [1 - dispo_pos_low, 1 + dispo_pos_high], of incorrect
    ones (A < 0) [1 - dispo_neg_low, 1 + dispo_neg_high]. Inside the band the token's gradient
    is sg(r) * A * grad log pi; outside it the token gets none (unlike CISPO, which keeps a
    capped gradient there). Unset bounds fall back to ``epsilon`` / ``epsilon_high``. This
    follows the paper's abstract (four separately tuned clipping regimes).
    """
    high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon

    def bound(value: Optional[float], default: float) -> float:
        return default if value is None else value

    positive = advantages > 0
    lo = torch.where(positive, 1.0 - bound(cfg.dispo_pos_low, cfg.epsilon), 1.0 - bound(cfg.dispo_neg_low, cfg.epsilon))
    hi = torch.where(positive, 1.0 + bound(cfg.dispo_pos_high, high), 1.0 + bound(cfg.dispo_neg_high, high))
    ratio = torch.exp(log_ratio)
    inside = ((ratio >= lo) & (ratio <= hi)).float()
    return -ratio.detach() * advantages * log_ratio * inside, 1.0 - inside


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


@KL_ESTIMATORS.register("forward")
def kl_forward(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Forward KL(ref || pi) from samples of pi (RAPO, 2025): rho log rho - rho + 1 with
    rho = ref / pi. Unbiased (E_pi[rho] = 1) and non-negative; mass-covering, so it pushes the
    policy to keep the reference's support instead of collapsing onto a mode.

    Differentiating that value through ``logp`` would give -E_pi[rho log rho grad log pi],
    which is not the gradient of KL(ref || pi). The true one is -E_ref[grad log pi] =
    E_pi[(1 - rho) grad log pi] (E_pi[grad log pi] = 0 makes the 1 a free baseline, zero
    when pi = ref), so the returned tensor carries the value and the surrogate
    sg(1 - rho) * logp for the gradient (its value cancels with its own stop-gradient).
    """
    rho = torch.exp(ref_logp - logp)
    value = rho * (ref_logp - logp) - rho + 1.0
    surrogate = (1.0 - rho).detach() * logp
    return value.detach() + surrogate - surrogate.detach()


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
    norm = cfg.loss_agg_norm if cfg.loss_agg_norm is not None else mb.max_steps  # Dr.GRPO's constant
    aggregate = partial(LOSS_AGGREGATIONS.get(cfg.loss_agg_mode), norm=norm)
    mask = mb.mask
    ratio_log = log_ratio(out.logp, mb.logp_old, mask, cfg.importance_sampling_level)
    pg, clipped = POLICY_LOSSES.get(cfg.policy_loss)(ratio_log, mb.advantages, cfg)
    metrics: Dict[str, torch.Tensor] = {}
    for modifier in cfg.stages.loss_modifiers:  # TIS, top-entropy tokens, ... (workbench/stages)
        pg, modifier_metrics = modifier(pg, out, mb)
        metrics.update(modifier_metrics)
    loss = aggregate(pg, mask)
    metrics["loss/policy"] = loss.detach()

    if cfg.vf_coef > 0 and out.values is not None:
        if mb.returns is None:
            raise ConfigError(f"vf_coef > 0 but advantage '{cfg.advantage}' makes no value targets; set algo.vf_coef=0")
        vl = aggregate(value_loss(out.values, mb.values_old, mb.returns, cfg.value_clip), mask)
        loss = loss + cfg.vf_coef * vl
        metrics["loss/value"] = vl.detach()
    if out.entropy is not None:
        ent = aggregate(out.entropy, mask)
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
        kl_term = aggregate(kl, mask)
        loss = loss + cfg.beta * kl_term
        metrics["loss/kl_ref"] = kl_term.detach()

    with torch.no_grad():
        token_lr = out.logp - mb.logp_old
        n = mask.sum().clamp(min=1)
        # approx KL(old || new) by k3, as CleanRL/SB3 log it for target_kl
        metrics["policy/approx_kl"] = (((torch.exp(token_lr) - 1) - token_lr) * mask).sum() / n
        metrics["policy/clip_frac"] = (clipped * mask).sum() / n
    return loss, metrics
