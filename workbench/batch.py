"""The batch contract: every modality fills the same [N trajectories, T steps] tensors.

Advantage estimators and objectives read only the common fields; ``policy_inputs`` carries
whatever the policy needs to recompute its log-probs (observations and actions; token ids;
latents and timesteps). Its tensors are indexed either per row (``[N, ...]``) or per cell
(``[N, T, ...]``) as the policy's ``sample_unit`` says. ``row_inputs`` holds per-trajectory
inputs that every step of a row shares (a prompt's text embeddings): ``[N, ...]``, stored once
per row and handed to the policy beside the cell it scores, so a 50-step diffusion row does
not carry 50 copies of its prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Optional

import torch


@dataclass
class Batch:
    """Trajectories of one iteration.

    Shapes: N trajectories (rows), T steps. ``mask`` marks valid steps.
    """

    logp_old: torch.Tensor  # [N, T] log-prob of the taken action under the collecting policy
    mask: torch.Tensor  # [N, T] float, 1 for valid steps
    rewards: torch.Tensor  # [N, T] per-step reward (a terminal reward sits on the last valid step)
    dones: torch.Tensor  # [N, T] float, 1 where an episode ended after this step (terminated or truncated)
    truncated: Optional[torch.Tensor] = None  # [N, T] float, 1 where that end was a time limit (bootstrapped)
    values: Optional[torch.Tensor] = None  # [N, T] critic value V(s_t) at collection
    next_values: Optional[torch.Tensor] = None  # [N, T] V(s_{t+1}); at a truncation V(final obs)
    group: Optional[torch.Tensor] = None  # [N] long, group id (prompt or start state) for group baselines
    prompt_id: Optional[torch.Tensor] = None  # [N] long, the row's prompt, stable over a run (per-prompt statistics); None: group
    policy_inputs: Dict[str, torch.Tensor] = field(default_factory=dict)
    row_inputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # [N, ...] shared by a row's steps
    advantages: Optional[torch.Tensor] = None  # [N, T] filled by the advantage estimator
    returns: Optional[torch.Tensor] = None  # [N, T] value targets, where the estimator makes them
    ref_logp: Optional[torch.Tensor] = None  # [N, T] reference log-probs, if collected
    rollout_logp: Optional[torch.Tensor] = None  # [N, T] the sampler's own log-probs (vLLM, EAD pairing), for TIS
    # [N, T] float, 1 where a valid step enters the loss; None = every valid step. Steps it
    # excludes (TRL's mask_truncated_completions) still count in rewards and advantages
    # (group baselines see their true reward); the minibatches' mask is mask * loss_mask.
    loss_mask: Optional[torch.Tensor] = None
    # the most steps a row can have (text: the generation limit max_new_tokens), a constant
    # across iterations unlike the padded width T; Dr.GRPO's normaliser when algo.loss_agg_norm is unset
    max_steps: Optional[int] = None

    def __post_init__(self) -> None:
        shape = self.logp_old.shape
        if self.logp_old.dim() != 2:
            raise ValueError(f"Batch.logp_old must be [N, T], got {tuple(shape)}")
        for f in ("mask", "rewards", "dones", "truncated", "values", "next_values", "advantages", "returns", "ref_logp", "rollout_logp",
                  "loss_mask"):
            t = getattr(self, f)
            if t is not None and t.shape != shape:
                raise ValueError(f"Batch.{f} has shape {tuple(t.shape)}, expected {tuple(shape)} like logp_old")
        for k, v in self.row_inputs.items():
            if v.shape[:1] != shape[:1]:
                raise ValueError(f"Batch.row_inputs[{k!r}] must start with N={shape[0]}, got {tuple(v.shape)}")
        if self.group is not None and self.group.shape != shape[:1]:
            raise ValueError(f"Batch.group must be [N]={shape[0]}, got {tuple(self.group.shape)}")
        if self.prompt_id is not None and self.prompt_id.shape != shape[:1]:
            raise ValueError(f"Batch.prompt_id must be [N]={shape[0]}, got {tuple(self.prompt_id.shape)}")

    @property
    def num_rows(self) -> int:
        return self.logp_old.shape[0]

    @property
    def num_steps(self) -> int:
        return self.logp_old.shape[1]

    def with_(self, **changes) -> "Batch":
        """A copy with some fields replaced (batches are treated as values)."""
        return replace(self, **changes)


@dataclass
class Minibatch:
    """A slice of a Batch handed to ``policy.evaluate`` and the objective.

    Row mode: tensors are [M, T]; cell mode: [M, 1] (one step per row). ``mask`` is the loss
    mask (Batch.mask * Batch.loss_mask). ``policy_inputs``
    also holds the batch's ``row_inputs``: [M, ...] in row mode, [M, 1, ...] in cell mode (the
    row of each cell), so a policy reads both kinds alike.
    """

    logp_old: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    returns: Optional[torch.Tensor]
    values_old: Optional[torch.Tensor]
    ref_logp: Optional[torch.Tensor]
    policy_inputs: Dict[str, torch.Tensor]
    rollout_logp: Optional[torch.Tensor] = None
    max_steps: Optional[int] = None  # Batch.max_steps: the constant of seq-mean-token-sum-norm
