"""The policy interface the trainer sees, and the acting contracts the collectors drive.

Every policy is an ``nn.Module`` that the trainer scores the same way:

- ``sample_unit``: ``"cell"`` if one step is scored on its own from stored inputs (control
  actions, denoising steps), ``"row"`` if a whole trajectory is scored in one pass (tokens);
- ``log_probs(policy_inputs) -> PolicyOutput``: new log-probs, entropy and values for the
  minibatch, shaped like its mask.

How a policy *acts* depends on its family, and each family declares it as a contract below.
An env names the contract it needs (``Environment.policy_contract``) and the collector of that
contract (``workbench/rollout/``) drives the policy; a policy and an env that do not match are
refused at start-up, before any model loads (:func:`check_compatible`).

=========================  ===========================================  ==========================
contract                   how it acts                                  collector
=========================  ===========================================  ==========================
``TokenGenerator``         generate ``n`` completions per prompt        ``rollout.tokens``
``ControlActor``           act on observations; value them (critic)     ``rollout.control``
``DenoisingSampler``       sample images from conditions (class ids,    ``rollout.denoising``
                           text; later actions + context frames)
=========================  ===========================================  ==========================
"""
from __future__ import annotations

import abc
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from workbench.batch import PolicyOutput
from workbench.registry import ConfigError


class Policy(nn.Module):
    sample_unit: str = "cell"
    has_critic: bool = False  # log_probs() returns values (GAE needs them)
    contract: str = "policy"  # the acting contract's name, for messages

    def log_probs(self, policy_inputs: Dict[str, torch.Tensor]) -> PolicyOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def reset_reference(self) -> None:
        """Re-anchor a KL reference on the current weights (no reference: nothing to do)."""

    def param_groups(self) -> list:
        """Parameter groups for the optimiser (override for per-group learning rates)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]


class TokenGenerator(Policy, abc.ABC):
    """Token policies (causal LMs; later VLMs and agents): each generated token is a step, and a
    whole completion is scored in one forward pass."""

    sample_unit = "row"
    contract = "token generator"
    sampling: Any  # rollout.base.SamplingConfig: the training-time sampling options
    tokenizer: Any

    @abc.abstractmethod
    def rollout(self, prompts: List[str], n: int, sampling: Optional[Any] = None) -> Any:
        """``n`` completions of each prompt -> ``rollout.base.TokenRollout`` (rows grouped by prompt)."""

    @abc.abstractmethod
    def encode_demonstrations(self, prompts: List[str], targets: List[str]) -> Any:
        """Token ids and a loss mask of (prompt, target) pairs, for supervised warm-start."""


class ControlActor(Policy, abc.ABC):
    """Control policies with a critic: a batch of observations in, actions and their log-probs
    and values out."""

    sample_unit = "cell"
    has_critic = True
    contract = "control actor"

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where the collector puts the buffers it fills."""

    @abc.abstractmethod
    def act(self, obs: Any, deterministic: bool = False, update_stats: bool = True) -> Any:
        """Observations of E envs -> ``ActOutput(actions [E, A], logp [E], values [E], obs)``;
        ``obs`` is what the policy saw (a tensor or a dict of tensors), stored for ``log_probs``."""

    @abc.abstractmethod
    def value_of(self, obs: Any) -> torch.Tensor:
        """[E] critic values of observations (bootstrapping at a time limit)."""


class DenoisingSampler(Policy, abc.ABC):
    """Denoising policies (DDIM, flow-matching SDE; later world models): each denoising step is
    a Gaussian step with a log-prob, scored on its own."""

    sample_unit = "cell"
    contract = "denoising sampler"

    @abc.abstractmethod
    def sample(self, conditions: Sequence[Any], generator: Optional[torch.Generator] = None, iteration: int = 0,
               trunks: Optional[torch.Tensor] = None, evaluation: bool = False) -> Any:
        """Images [B, C, H, W] in [0, 1] and their ``Trajectory`` (per-step inputs and log-probs,
        the trained-step mask, per-row conditioning) for ``conditions`` (class ids or text)."""


def check_compatible(env_cls: type, policy_cls: type, env_name: str, policy_name: str,
                     suggestions: Sequence[str] = ()) -> None:
    """Refuse, in one line naming both, a policy that cannot act in an env (before any model
    loads). ``suggestions``: policy configs that would fit, for the message."""
    wanted = getattr(env_cls, "policy_contract", None)
    if wanted is None or (isinstance(policy_cls, type) and issubclass(policy_cls, wanted)):
        return
    have = getattr(policy_cls, "contract", "policy")
    hint = f"; use {', '.join(f'policy={s}' for s in suggestions)}" if suggestions else ""
    raise ConfigError(f"policy {policy_name} (a {have}) cannot act in env {env_name}, which needs a {wanted.contract}{hint}")
