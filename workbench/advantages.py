"""Advantage estimators, registered by name (``algo.advantage``).

Each estimator is a pure function ``fn(batch, cfg) -> (advantages [N, T], returns [N, T] | None)``.
``returns`` are value targets and exist only where the estimator uses a critic. An estimator
with a history across iterations (DDPO's per-prompt statistics) is marked ``@stateful`` and is
called as ``fn(batch, cfg, state)`` with a dict the trainer keeps and checkpoints.

``group`` ids name the rows compared with each other: a prompt (or start state), or a B²
branch trunk. Group-relative estimators only compare rows within one batch; ``per_prompt``
remembers rewards across iterations by ``prompt_id`` (ids stable over a run; ``group`` where a
batch has none), so two trunks of one prompt share its statistics.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from workbench.batch import Batch
from workbench.registry import ADVANTAGES, ConfigError

Advantages = Tuple[torch.Tensor, Optional[torch.Tensor]]


def gae(
    rewards: torch.Tensor,  # [N, T]
    values: torch.Tensor,  # [N, T] V(s_t)
    next_values: torch.Tensor,  # [N, T] V(s_{t+1}); V(final obs) at a truncation
    dones: torch.Tensor,  # [N, T] episode ended after step t
    terminated: torch.Tensor,  # [N, T] ended by a true terminal (no bootstrap)
    gamma: float,
    lam: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    Truncation is bootstrapped (its ``next_values`` is the value of the final observation),
    termination is not; the recursion is cut at every episode end.
    """
    deltas = rewards + gamma * next_values * (1.0 - terminated) - values
    carry = (1.0 - dones) * gamma * lam
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        last = deltas[:, t] + carry[:, t] * last
        adv[:, t] = last
    return adv, adv + values


def sequence_scores(batch: Batch) -> torch.Tensor:
    """[N] total reward of each trajectory (outcome rewards sit on the last valid step)."""
    return (batch.rewards * batch.mask).sum(dim=1)


def group_baseline(scores: torch.Tensor, group: torch.Tensor, scale: str, leave_one_out: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """[N] score minus its group's mean (or leave-one-out mean), optionally divided by a std.

    scale: "group" divides by the group's std (GRPO), "batch" by the whole batch's std
    (Dr.GRPO-style "scale_rewards=batch"), "none" leaves the difference (Dr.GRPO).
    """
    _, inv, counts = torch.unique(group, return_inverse=True, return_counts=True)
    ngroups = counts.numel()
    sums = torch.zeros(ngroups, dtype=scores.dtype, device=scores.device).index_add_(0, inv, scores)
    n = counts.to(scores.dtype)[inv]
    mean = sums[inv] / n
    if leave_one_out:
        if bool((counts < 2).any()):
            raise ValueError("rloo needs at least 2 trajectories per group")
        adv = scores - (sums[inv] - scores) / (n - 1)
    else:
        adv = scores - mean
    if scale == "group":
        sq = torch.zeros(ngroups, dtype=scores.dtype, device=scores.device).index_add_(0, inv, (scores - mean) ** 2)
        # unbiased std as in TRL/verl (torch.std); a group of one has std 0
        std = torch.sqrt(sq[inv] / (n - 1).clamp(min=1))
        adv = adv / (std + eps)
    elif scale == "batch":
        adv = adv / (scores.std() + eps)
    elif scale != "none":
        raise ConfigError(f"unknown scale_rewards '{scale}'; valid choices: batch, group, none")
    return adv


def _require(batch: Batch, name: str, estimator: str) -> torch.Tensor:
    value = getattr(batch, name)
    if value is None:
        raise ConfigError(f"advantage estimator '{estimator}' needs batch.{name}, which this env/policy does not provide")
    return value


@ADVANTAGES.register("gae")
def gae_estimator(batch: Batch, cfg) -> Advantages:
    values = _require(batch, "values", "gae")
    next_values = _require(batch, "next_values", "gae")
    truncated = batch.truncated if batch.truncated is not None else torch.zeros_like(batch.dones)
    terminated = batch.dones * (1.0 - truncated)
    # the recursion never reaches into padding: a valid step followed by padding ends its segment
    next_mask = torch.cat([batch.mask[:, 1:], torch.ones_like(batch.mask[:, :1])], dim=1)
    ends = torch.maximum(batch.dones, 1.0 - next_mask)
    adv, ret = gae(batch.rewards, values, next_values, ends, terminated, cfg.gamma, cfg.gae_lambda)
    return adv * batch.mask, ret * batch.mask


def _broadcast(per_row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_row[:, None] * mask


@ADVANTAGES.register("grpo")
def grpo_estimator(batch: Batch, cfg) -> Advantages:
    """GRPO (Shao et al. 2024): (r - mean_group) / std_group, with TRL's ``scale_rewards``."""
    group = _require(batch, "group", "grpo")
    return _broadcast(group_baseline(sequence_scores(batch), group, cfg.scale_rewards), batch.mask), None


@ADVANTAGES.register("dr_grpo")
def dr_grpo_estimator(batch: Batch, cfg) -> Advantages:
    """Dr.GRPO (Liu et al. 2025): r - mean_group, no std division."""
    group = _require(batch, "group", "dr_grpo")
    return _broadcast(group_baseline(sequence_scores(batch), group, "none"), batch.mask), None


@ADVANTAGES.register("rloo")
def rloo_estimator(batch: Batch, cfg) -> Advantages:
    """RLOO (Ahmadian et al. 2024): r minus the mean of the other samples of the same group."""
    group = _require(batch, "group", "rloo")
    return _broadcast(group_baseline(sequence_scores(batch), group, "none", leave_one_out=True), batch.mask), None


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the valid entries; invalid entries become 0."""
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (x - mean) / (torch.sqrt(var) + eps) * mask


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp_estimator(batch: Batch, cfg) -> Advantages:
    """REINFORCE++ (Hu 2025): discounted reward-to-go per step, whitened over the whole batch.

    ``gamma`` defaults to 1 for this estimator (AlgoConfig), REINFORCE++'s setting: an outcome
    reward on a completion's last token reaches every token undiscounted."""
    rtg = torch.zeros_like(batch.rewards)
    running = torch.zeros_like(batch.rewards[:, 0])
    for t in range(batch.num_steps - 1, -1, -1):
        running = batch.rewards[:, t] + cfg.gamma * running * (1.0 - batch.dones[:, t])
        rtg[:, t] = running
    return masked_whiten(rtg * batch.mask, batch.mask), None


def stateful(fn: Callable) -> Callable:
    """Mark an estimator that keeps a history: it is called as ``fn(batch, cfg, state)``."""
    fn.stateful = True
    return fn


@ADVANTAGES.register("per_prompt")
@stateful
def per_prompt_estimator(batch: Batch, cfg, state: Dict[str, Any]) -> Advantages:
    """DDPO's per-prompt stat tracking (Black et al. 2023, ``stat_tracking.py``).

    Every prompt (group id) keeps its last ``stat_buffer_size`` rewards across iterations;
    A = (r - mean) / (std + 1e-6) with that buffer's mean and population std once it holds
    ``stat_min_count`` rewards, and with the whole batch's before (this iteration's rewards
    are added first, as in DDPO).
    """
    group = batch.prompt_id if batch.prompt_id is not None else _require(batch, "group", "per_prompt")
    scores = sequence_scores(batch)
    values = scores.detach().double().cpu()
    buffers = state.setdefault("per_prompt", {})
    adv = torch.empty_like(values)
    batch_mean, batch_std = values.mean(), values.std(unbiased=False)
    for gid in torch.unique(group).tolist():
        rows = (group == gid).cpu()
        buf = deque(buffers.get(int(gid), []), maxlen=cfg.stat_buffer_size)
        buf.extend(values[rows].tolist())
        buffers[int(gid)] = list(buf)
        if len(buf) < cfg.stat_min_count:
            mean, std = batch_mean, batch_std
        else:
            hist = torch.tensor(list(buf), dtype=torch.float64)
            mean, std = hist.mean(), hist.std(unbiased=False)
        adv[rows] = (values[rows] - mean) / (std + 1e-6)
    return _broadcast(adv.to(scores.dtype).to(scores.device), batch.mask), None


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-minibatch or per-batch advantage normalisation (PPO's ``norm_adv``)."""
    return masked_whiten(adv, mask)


def compute_advantages(batch: Batch, cfg, state: Optional[Dict[str, Any]] = None) -> Batch:
    """Run the configured estimator, then batch normalisation (``normalize_advantages=batch``)
    and the configured advantage modifiers (``algo.advantage_modifiers``: DDPO / Flow-GRPO's
    clip to +-5, alias ``algo.advantage_clip``; :mod:`workbench.stages.advantage_modifiers`)."""
    fn = ADVANTAGES.get(cfg.advantage)
    if getattr(fn, "stateful", False):
        adv, ret = fn(batch, cfg, {} if state is None else state)
    else:
        adv, ret = fn(batch, cfg)
    if cfg.normalize_advantages == "batch":
        adv = normalize_advantages(adv, batch.mask)
    for modifier in cfg.stages.advantage_modifiers:
        adv = modifier(adv, batch)
    return batch.with_(advantages=adv, returns=ret)
