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

    @property
    def train_mask(self) -> torch.Tensor:
        """[N, T] the steps that enter the loss: ``mask * loss_mask``."""
        return self.mask if self.loss_mask is None else self.mask * self.loss_mask

    def sample_ids(self, unit: str) -> torch.Tensor:
        """The ids of the samples a minibatch draws from: every row (``unit="row"``), or every
        cell of ``train_mask`` as ``row * T + step`` (``unit="cell"``)."""
        if unit == "row":
            return torch.arange(self.num_rows, device=self.mask.device)
        return self.train_mask.reshape(-1).nonzero().squeeze(1)

    def select(self, idx: torch.Tensor, unit: str) -> "Minibatch":
        """The minibatch of samples ``idx`` (ids from :meth:`sample_ids`): whole rows as [M, T]
        tensors, or single (row, step) cells as [M, 1]. Per-row inputs follow their row."""
        if unit not in ("row", "cell"):
            raise ValueError(f"unit must be 'row' or 'cell', got {unit!r}")
        T = self.num_steps
        if unit == "row":
            def pick(t): return t[idx]
            pick_input = pick_row = pick
        else:
            def pick(t): return t.reshape(-1)[idx].unsqueeze(1)
            def pick_input(t): return t.reshape(-1, *t.shape[2:])[idx].unsqueeze(1)
            def pick_row(t): return t[idx // T].unsqueeze(1)  # the row of each cell
        optional = lambda t: None if t is None else pick(t)  # noqa: E731
        return Minibatch(
            logp_old=pick(self.logp_old),
            mask=pick(self.train_mask),
            advantages=pick(self.advantages),
            returns=optional(self.returns),
            values_old=optional(self.values),
            ref_logp=optional(self.ref_logp),
            rollout_logp=optional(self.rollout_logp),
            policy_inputs={**{k: pick_input(v) for k, v in self.policy_inputs.items()},
                           **{k: pick_row(v) for k, v in self.row_inputs.items()}},
            max_steps=self.max_steps,
        )


@dataclass
class PolicyOutput:
    """What a policy's ``log_probs`` returns for a minibatch; all tensors [M, T] like its mask."""

    logp: torch.Tensor  # new log-probs of the stored actions
    entropy: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None  # critic values, where the policy has a critic
    ref_logp: Optional[torch.Tensor] = None  # token policies: KL by k1/k2/k3 estimators
    kl: Optional[torch.Tensor] = None  # exact per-step KL where closed form exists (Gaussian steps)


@dataclass
class Minibatch:
    """A slice of a Batch handed to ``policy.log_probs`` and the objective.

    Row mode: tensors are [M, T]; cell mode: [M, 1] (one step per row). ``mask`` is the loss
    mask (Batch.mask * Batch.loss_mask). ``policy_inputs``
    also holds the batch's ``row_inputs``: [M, ...] in row mode, [M, 1, ...] in cell mode (the
    row of each cell), so a policy reads both kinds alike.
    """

    logp_old: torch.Tensor  # [M, T] (row) or [M, 1] (cell): log-prob under the collecting policy
    mask: torch.Tensor  # [M, T] / [M, 1] the loss mask: Batch.mask * Batch.loss_mask
    advantages: torch.Tensor  # [M, T] / [M, 1]
    returns: Optional[torch.Tensor]  # [M, T] / [M, 1] value targets (GAE), else None
    values_old: Optional[torch.Tensor]  # [M, T] / [M, 1] critic values at collection (value clipping)
    ref_logp: Optional[torch.Tensor]  # [M, T] / [M, 1] reference log-probs, if collected
    policy_inputs: Dict[str, torch.Tensor]  # [M, T, ...] / [M, 1, ...] step inputs, plus row_inputs [M, ...] / [M, 1, ...]
    rollout_logp: Optional[torch.Tensor] = None  # [M, T] / [M, 1] the sampler's own log-probs (TIS)
    max_steps: Optional[int] = None  # Batch.max_steps: the constant of seq-mean-token-sum-norm
