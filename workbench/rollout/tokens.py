"""The collector of token generators: prompts in, groups of completions out, as a Batch.

Each prompt gets ``group_size`` completions (the group GRPO-style advantages compare within);
each generated token is a step, and a completion's reward lands on its last valid token
(``dones``). The env supplies prompts and scores completions; this module drives the policy
and lays the tokens out for the trainer. It is the seam where a worker boundary (Ray rollout
actors, asynchronous generation, multi-turn agent loops) attaches.

:func:`collect_filtered_groups` runs a batch filter over sampling rounds (DAPO's dynamic
sampling, Yu et al. 2025, sec. 3.2; verl ``filter_groups``: keep only the groups whose rewards
differ): rounds of groups, each scored at once, until enough are kept or the round budget is spent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

import torch

from workbench.batch import Batch
from workbench.rollout.base import TokenRollout, concat_rollouts

def token_batch(out: TokenRollout, group_size: int, max_steps: int, mask_truncated: bool = False) -> Batch:
    """The Batch of consecutive groups of ``group_size`` rows of a rollout (rewards still 0).

    ``max_steps``: the generation limit (Dr.GRPO's constant normaliser); ``mask_truncated``:
    no gradient from completions cut by it (TRL's ``mask_truncated_completions``; their reward
    still counts in the group baselines)."""
    mask = out.completion_mask
    N = mask.shape[0]
    loss_mask = (~out.truncated).float().unsqueeze(1).expand_as(mask).contiguous() if mask_truncated else None
    lengths = mask.sum(1).long()
    dones = torch.zeros_like(mask)
    dones[torch.arange(N), (lengths - 1).clamp(min=0)] = 1.0
    return Batch(
        logp_old=out.logp,
        mask=mask,
        rewards=torch.zeros_like(mask),
        dones=dones,
        group=torch.arange(N // group_size, device=mask.device).repeat_interleave(group_size),
        ref_logp=out.ref_logp,
        rollout_logp=out.rollout_logp,  # for TIS when the sampler is not the trained model
        loss_mask=loss_mask,
        max_steps=max_steps,
        policy_inputs={
            "input_ids": out.input_ids,
            "attention_mask": out.attention_mask,
            "prompt_length": torch.full((N,), out.prompt_length, device=mask.device),
        },
        row_inputs=dict(out.row_inputs),  # e.g. a VLM's images, gathered by row in minibatches
    )


def rollout_metrics(out: TokenRollout) -> Dict[str, float]:
    """Completion length, the truncated share and the sampler/trainer log-prob mismatch."""
    mask = out.completion_mask
    mismatch = ((out.logp - out.rollout_logp).abs() * mask).sum() / mask.sum().clamp(min=1)
    return {"response/length_mean": float(mask.sum(1).float().mean()),
            "response/truncated_frac": float(out.truncated.float().mean()),
            "rollout/logp_mismatch": float(mismatch)}


def collect_groups(policy, prompts: Sequence[str], group_size: int) -> TokenRollout:
    """``group_size`` completions of each prompt, rows grouped by prompt."""
    return policy.rollout(list(prompts), n=group_size)


@dataclass
class FilteredGroups:
    """What a batch filter kept over the sampling rounds: the rollout of the kept groups and
    their scores, with the bookkeeping the run logs (sampling/rounds, kept_groups, dropped_groups)."""

    rollout: TokenRollout
    scores: torch.Tensor  # [rows] float64 per-row total reward of the kept rows
    rounds: int
    kept_groups: int
    dropped_groups: int
    every_round: List[object] = field(default_factory=list)  # what score() returned per round, for metrics


def collect_filtered_groups(policy, draw_prompts: Callable[[], List[str]], group_size: int, wanted_groups: int,
                            batch_filter, score: Callable[[TokenRollout], tuple]) -> FilteredGroups:
    """Sampling rounds under a batch filter (a ``BATCH_FILTERS`` stage, e.g. DAPO's dynamic
    sampling). Each round draws ``wanted_groups`` prompts, generates their groups and scores them
    (``score(rollout) -> (per-row scores [rows] float64, anything to keep for metrics)``); the
    filter picks the groups to keep, until ``wanted_groups`` are kept or ``max_rounds`` rounds
    were sampled. If fewer are kept the batch holds just those; if none, the last round's groups
    (for dynamic sampling: all with zero group advantage)."""
    G = group_size
    kept: List[TokenRollout] = []
    kept_scores: List[torch.Tensor] = []
    seen: List[object] = []
    num_kept = num_dropped = rounds = 0
    last = None
    while num_kept < wanted_groups and rounds < batch_filter.cfg.max_rounds:
        rounds += 1
        out = collect_groups(policy, draw_prompts(), G)
        scores, info = score(out)
        seen.append(info)
        groups = scores.numel() // G
        passed = batch_filter(scores, torch.arange(groups).repeat_interleave(G)).tolist()
        num_dropped += groups - len(passed)
        take = passed[: wanted_groups - num_kept]  # surplus groups are discarded
        if take:
            rows = [g * G + j for g in take for j in range(G)]
            kept.append(out.select(rows))
            kept_scores.append(scores[rows])
            num_kept += len(take)
        last = (out, scores)
    if not kept:  # nothing kept: train on the last round
        kept, kept_scores = [last[0]], [last[1]]
    pad_id = getattr(policy.tokenizer, "pad_token_id", None)
    return FilteredGroups(concat_rollouts(kept, 0 if pad_id is None else int(pad_id)), torch.cat(kept_scores),
                          rounds, num_kept, num_dropped, seen)
