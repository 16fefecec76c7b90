"""Visuomotor Gaussian actor-critic: pixels (and an optional state vector) -> Gaussian actions.

A pixel encoder (a small conv stack, or any timm backbone by name; both from
:mod:`workbench.vision`) turns uint8 frames into a feature vector; the env's proprioceptive
"state", running-normalised, is concatenated to it; the actor and critic heads, the
state-independent log-std and the log-prob/entropy maths are gaussian_mlp's
(:class:`GaussianActorCritic`). Pixels stay uint8 in the batch (a quarter of the memory of
float32) and are scaled inside the policy. Frame stacking happens in the env
(``env.frame_stack``: the last k frames concatenated along channels, oldest first), so the
policy just sees k*C channels.

Observations, as the gym_control adapter hands them over (E envs):
``{"pixels": uint8 [E, C, H, W], "state": float [E, D] (optional)}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from workbench.environment import EnvSpec
from workbench.normalization import RunningMeanStd
from workbench.objectives import PolicyOutput
from workbench.policies.gaussian_mlp import ACTIVATIONS, ActOutput, GaussianActorCritic, fast_forward, mlp
from workbench.fields import check_choices, choice
from workbench.registry import ConfigError, POLICIES
from workbench.vision import CONV_STACKS, channel_stats, conv_stack, data_config, timm_backbone


class PixelEncoder(nn.Module):
    """uint8 [B, C, H, W] -> [B, feature_dim]: backbone, then Linear -> LayerNorm -> tanh
    (DrQ-v2's trunk). The backbone always runs in eval mode (BatchNorm on running statistics,
    no dropout), so the log-probs ``log_probs`` recomputes equal the ones sampled in the rollout."""

    def __init__(self, cfg: "GaussianCNNPolicy.Config", pixel_shape: Tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = pixel_shape
        if cfg.encoder.startswith("timm:"):
            self.backbone = timm_backbone(cfg.encoder[len("timm:"):], "policy.encoder", in_channels=channels,
                                          pretrained=cfg.pretrained, weights=cfg.weights, weights_option="policy.weights",
                                          create_kwargs=cfg.encoder_kwargs)
            mean, std = data_config(self.backbone)[:2]
        else:
            self.backbone, mean, std = conv_stack(cfg.encoder, channels, cfg.ortho_init), (0.5,), (1.0,)  # x - 0.5
        self.register_buffer("mean", channel_stats(mean, channels), persistent=False)  # stacked frames: cycled
        self.register_buffer("std", channel_stats(std, channels), persistent=False)
        if cfg.freeze_encoder:
            self.backbone.requires_grad_(False)
        self.backbone.eval()
        try:
            with torch.no_grad():
                size = self.backbone(torch.zeros(1, channels, height, width)).shape[-1]
        except RuntimeError as e:
            raise ConfigError(f"policy.encoder={cfg.encoder!r} does not fit {height}x{width} pixels: {str(e).splitlines()[0]}") from None
        self.trunk = nn.Sequential(nn.Linear(size, cfg.feature_dim), nn.LayerNorm(cfg.feature_dim), nn.Tanh())

    def train(self, mode: bool = True) -> "PixelEncoder":
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float [B, feature_dim] in (-1, 1)."""
        x = (pixels.float() / 255.0 - self.mean) / self.std
        return self.trunk(self.backbone(x))


@POLICIES.register("gaussian_cnn")
class GaussianCNNPolicy(GaussianActorCritic):
    """Pixels (+ state) -> Gaussian actions: encoder features, with the normalised state
    appended, feed the actor and critic MLPs (see the module docstring)."""

    @dataclass
    class Config:
        name: str = "gaussian_cnn"
        encoder: str = choice(*CONV_STACKS, "timm:<model name>")  # nature | drq (conv stacks above) | timm:<model name> (any timm backbone)
        encoder_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (e.g. img_size)
        pretrained: bool = False  # timm: fetch pretrained weights from the hub (needs network access)
        weights: Optional[str] = None  # timm: local weights file (.safetensors, or torch file loaded weights_only)
        freeze_encoder: bool = False  # no gradient into the backbone (the trunk and heads still train)
        share_encoder: bool = True  # one encoder for actor and critic, trained by both losses; false: one each
        feature_dim: int = 64  # image features after the trunk (Linear -> LayerNorm -> tanh)
        use_state: bool = True  # concatenate the observation's "state" vector, if it has one, to the features
        hidden: List[int] = field(default_factory=lambda: [64, 64])  # actor head MLP
        critic_hidden: Optional[List[int]] = None  # critic head MLP; default: same as hidden
        activation: str = choice(*ACTIVATIONS)  # of the head MLPs
        log_std_init: float = 0.0
        ortho_init: bool = True  # orthogonal init (sqrt 2 for hidden layers and convs; 0.01 actor, 1 critic outputs)
        normalize_obs: bool = True  # running mean/std normalisation of the "state" vector (pixels: /255)
        clip_obs: float = 10.0  # clip of the normalised state

        def __post_init__(self) -> None:
            check_choices(self, "policy")
            if (self.weights or self.pretrained or self.encoder_kwargs) and not self.encoder.startswith("timm:"):
                raise ConfigError("policy.weights, policy.pretrained and policy.encoder_kwargs need a timm encoder (policy.encoder=timm:<name>)")
            if self.feature_dim < 1:
                raise ConfigError(f"policy.feature_dim must be >= 1, got {self.feature_dim}")

    def __init__(self, cfg: "GaussianCNNPolicy.Config", spec: EnvSpec) -> None:
        super().__init__()
        space = spec.observation_space
        keys = getattr(space, "spaces", None)  # a gymnasium Dict's {key: space}
        pixels = keys.get("pixels") if isinstance(keys, dict) else None
        if pixels is None or len(pixels.shape) != 3 or pixels.dtype != np.uint8:
            raise ConfigError("gaussian_cnn needs Dict observations with uint8 'pixels' [C, H, W] "
                              "(e.g. env.pixels.width=64 for a MuJoCo env); got " + str(space or spec.observation_shape))
        state = keys.get("state") if cfg.use_state else None
        if state is not None and len(state.shape) != 1:
            raise ConfigError(f"gaussian_cnn needs a flat 'state' vector, got shape {state.shape}")
        self.cfg, self.state_dim = cfg, state.shape[0] if state is not None else 0
        self.encoder = PixelEncoder(cfg, pixels.shape)
        self.critic_encoder = None if cfg.share_encoder else PixelEncoder(cfg, pixels.shape)
        width, act_dim = cfg.feature_dim + self.state_dim, spec.action_dim
        self.actor = mlp([width, *cfg.hidden, act_dim], cfg.activation, 0.01, cfg.ortho_init)
        self.critic = mlp([width, *(cfg.critic_hidden or cfg.hidden), 1], cfg.activation, 1.0, cfg.ortho_init)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(cfg.log_std_init)))
        self.obs_rms = RunningMeanStd((self.state_dim,))

    def _inputs(self, obs: Dict[str, np.ndarray], update_stats: bool) -> Dict[str, torch.Tensor]:
        """Raw {"pixels": uint8 [E, C, H, W], "state": [E, D]} -> tensors on the policy's device:
        pixels still uint8, state normalised float32 (the inputs ``log_probs`` gets back)."""
        if not isinstance(obs, dict) or "pixels" not in obs:
            raise ConfigError("gaussian_cnn acts on Dict observations with 'pixels'")
        out = {"pixels": torch.as_tensor(obs["pixels"]).to(self.device, non_blocking=True)}
        if self.state_dim:
            out["state"] = self.prepare_obs(obs["state"], update_stats)
        return out

    def _features(self, inputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """pixels uint8 [*B, C, H, W], state [*B, D] -> actor and critic features [*B, F + D]."""
        pixels = inputs["pixels"]
        lead, flat = pixels.shape[:-3], pixels.reshape(-1, *pixels.shape[-3:])
        feats = [self.encoder(flat)]
        feats.append(feats[0] if self.critic_encoder is None else self.critic_encoder(flat))
        if self.state_dim:
            state = inputs["state"].reshape(-1, self.state_dim).to(feats[0].dtype)
            feats = [torch.cat([f, state], dim=-1) for f in feats]
        return feats[0].reshape(*lead, -1), feats[1].reshape(*lead, -1)

    @torch.no_grad()
    def act(self, obs: Dict[str, np.ndarray], deterministic: bool = False, update_stats: bool = True) -> ActOutput:
        """Sample actions [E, A] for a batch of raw observations; ``ActOutput.obs`` is the dict
        of device tensors the policy saw (what collect stores for ``log_probs``)."""
        inputs = self._inputs(obs, update_stats)
        actor_in, critic_in = self._features(inputs)
        mean = fast_forward(self.actor, actor_in)
        noise = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
        actions = mean + torch.exp(self.log_std) * noise
        values = fast_forward(self.critic, critic_in).squeeze(-1)
        return ActOutput(actions, self._gaussian_logp(mean, actions), values, inputs)

    @torch.no_grad()
    def value_of(self, obs: Dict[str, np.ndarray]) -> torch.Tensor:
        """[E] values of raw observations (no statistics update), for bootstrapping truncations."""
        return fast_forward(self.critic, self._features(self._inputs(obs, update_stats=False))[1]).squeeze(-1)

    def log_probs(self, policy_inputs: Dict[str, torch.Tensor]) -> PolicyOutput:
        """policy_inputs: "pixels" uint8 [M, 1, C, H, W], "state" [M, 1, D] (if used),
        "actions" [M, 1, A] -> log-probs, entropy and values [M, 1]."""
        actor_in, critic_in = self._features(policy_inputs)
        logp = self._gaussian_logp(fast_forward(self.actor, actor_in).float(), policy_inputs["actions"])
        values = fast_forward(self.critic, critic_in).squeeze(-1).float()
        return PolicyOutput(logp=logp, entropy=self.entropy_per_step().expand_as(logp), values=values)
