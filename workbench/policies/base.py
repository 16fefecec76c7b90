"""The policy interface the trainer sees.

A policy is an ``nn.Module`` with:

- ``sample_unit``: ``"cell"`` if one step is scored on its own from stored inputs (control
  actions, denoising steps), ``"row"`` if a whole trajectory is scored in one pass (tokens);
- ``evaluate(policy_inputs) -> PolicyOutput``: new log-probs, entropy and values for the
  minibatch, shaped like its mask.

How a policy acts is between it and its environment adapter (``act`` for control), so the
trainer never needs to know what an observation or an action is.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from workbench.objectives import PolicyOutput


class Policy(nn.Module):
    sample_unit: str = "cell"

    def evaluate(self, policy_inputs: Dict[str, torch.Tensor]) -> PolicyOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def reset_reference(self) -> None:
        """Re-anchor a KL reference on the current weights (no reference: nothing to do)."""

    def param_groups(self) -> list:
        """Parameter groups for the optimiser (override for per-group learning rates)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
