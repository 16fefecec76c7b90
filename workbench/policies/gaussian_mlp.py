"""Gaussian actor-critic for continuous control (CleanRL's ppo_continuous_action agent).

Separate actor and critic MLPs with orthogonal init, a state-independent log-std, and a
running observation normaliser whose statistics are part of the policy (so evaluation and
resume see the same inputs the policy was trained on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workbench.environment import EnvSpec
from workbench.normalization import RunningMeanStd
from workbench.objectives import PolicyOutput
from workbench.policies.base import ControlActor
from workbench.fields import check_choices, choice
from workbench.registry import ConfigError, POLICIES

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}
LOG_2PI = math.log(2 * math.pi)


def mlp(sizes: List[int], activation: str, out_gain: float, ortho: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        if ortho:
            nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def fast_forward(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The same computation as ``net(x)`` without per-module call overhead (hooks, dispatch):
    on one control step the module machinery costs more than the arithmetic."""
    for layer in net:
        if isinstance(layer, nn.Linear):
            x = F.linear(x, layer.weight, layer.bias)
        elif isinstance(layer, nn.Tanh):
            x = torch.tanh(x)
        else:
            x = layer(x)
    return x


class ActOutput(NamedTuple):
    actions: torch.Tensor  # [E, A] sampled (unclipped) actions
    logp: torch.Tensor  # [E]
    values: torch.Tensor  # [E]
    obs: torch.Tensor  # [E, D] the normalised observation the policy saw (stored for evaluate)


class GaussianActorCritic(ControlActor):
    """What every Gaussian actor-critic for control shares: a state-independent log-std, the
    diagonal Gaussian's log-density and entropy, and a running observation normaliser whose
    statistics travel with the weights (``get/set_extra_state``: checkpoints, exports).

    A subclass sets ``self.cfg`` (with ``normalize_obs`` and ``clip_obs``), ``self.log_std``
    ``[A]`` and ``self.obs_rms`` in its ``__init__``, and writes its own act/value/evaluate."""

    sample_unit = "cell"
    cfg: Any
    log_std: nn.Parameter  # [A]
    obs_rms: RunningMeanStd

    @property
    def device(self) -> torch.device:
        return self.log_std.device

    def _gaussian_logp(self, mean: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-density [*B] of actions [*B, A] under N(mean [*B, A], exp(log_std)^2)."""
        z = (actions - mean) * torch.exp(-self.log_std)
        return -0.5 * (z * z).sum(-1) - self.log_std.sum() - 0.5 * LOG_2PI * mean.shape[-1]

    def entropy_per_step(self) -> torch.Tensor:
        """The Gaussian's entropy, a scalar: it does not depend on the observation."""
        return self.log_std.sum() + 0.5 * (1.0 + LOG_2PI) * self.log_std.numel()

    def prepare_obs(self, obs: np.ndarray, update_stats: bool) -> torch.Tensor:
        """[E, D] raw observations -> normalised float32 tensor on the policy's device."""
        if self.cfg.normalize_obs:
            if update_stats:
                self.obs_rms.update(obs)
            obs = self.obs_rms.normalize(obs, self.cfg.clip_obs)
        return torch.as_tensor(obs, dtype=torch.float32).to(self.device, non_blocking=True)

    def get_extra_state(self):
        return self.obs_rms.state_dict()

    def set_extra_state(self, state) -> None:
        self.obs_rms.load_state_dict(state)


@POLICIES.register("gaussian_mlp")
class GaussianMLPPolicy(GaussianActorCritic):
    """Flat observations [E, D] -> Gaussian actions: separate actor and critic MLPs."""

    @dataclass
    class Config:
        name: str = "gaussian_mlp"
        hidden: List[int] = field(default_factory=lambda: [64, 64])
        critic_hidden: Optional[List[int]] = None  # default: same as hidden
        activation: str = choice(*ACTIVATIONS)
        log_std_init: float = 0.0
        ortho_init: bool = True
        normalize_obs: bool = True
        clip_obs: float = 10.0

        def __post_init__(self) -> None:
            check_choices(self, "policy")

    def __init__(self, cfg: "GaussianMLPPolicy.Config", spec: EnvSpec) -> None:
        super().__init__()
        if len(spec.observation_shape) != 1:
            raise ConfigError(f"gaussian_mlp needs flat observations, got shape {spec.observation_shape}")
        self.cfg = cfg
        obs_dim, act_dim = spec.observation_shape[0], spec.action_dim
        critic_hidden = cfg.critic_hidden or cfg.hidden
        self.actor = mlp([obs_dim, *cfg.hidden, act_dim], cfg.activation, 0.01, cfg.ortho_init)
        self.critic = mlp([obs_dim, *critic_hidden, 1], cfg.activation, 1.0, cfg.ortho_init)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(cfg.log_std_init)))
        self.obs_rms = RunningMeanStd((obs_dim,))

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False, update_stats: bool = True) -> ActOutput:
        """Sample actions for a [E, D] batch of raw observations."""
        x = self.prepare_obs(obs, update_stats)
        mean = fast_forward(self.actor, x)
        noise = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
        actions = mean + torch.exp(self.log_std) * noise
        # (actions - mean) / std is the noise itself: the log-density needs no second pass
        logp = -0.5 * (noise * noise).sum(-1) - (self.log_std.sum() + 0.5 * LOG_2PI * mean.shape[-1])
        values = fast_forward(self.critic, x).squeeze(-1)
        return ActOutput(actions, logp, values, x)

    @torch.no_grad()
    def value_of(self, obs: np.ndarray) -> torch.Tensor:
        """[E] value of raw observations (no statistics update), for bootstrapping truncations."""
        return fast_forward(self.critic, self.prepare_obs(obs, update_stats=False)).squeeze(-1)

    def log_probs(self, policy_inputs: Dict[str, torch.Tensor]) -> PolicyOutput:
        obs, actions = policy_inputs["obs"], policy_inputs["actions"]  # [M, 1, D], [M, 1, A]
        mean = fast_forward(self.actor, obs)
        logp = self._gaussian_logp(mean.float(), actions)
        values = fast_forward(self.critic, obs).squeeze(-1).float()
        entropy = self.entropy_per_step().expand_as(logp)
        return PolicyOutput(logp=logp, entropy=entropy, values=values)
