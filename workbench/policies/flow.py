"""Flow-matching denoising as a policy: the SDE with the ODE's marginals (Flow-GRPO, arXiv 2505.05470).

A rectified-flow model predicts a velocity ``v`` with ``x_{sigma} = (1 - sigma) x_0 + sigma eps``
(sigma = 1 is noise). The deterministic Euler step ``x + v dt`` has no log-probability;
Flow-GRPO replaces it by an SDE step with the same marginals, a Gaussian (all in float32,
since bf16 overflows here):

    dt      = sigma_next - sigma                                    (negative)
    s_t     = noise_level * sqrt(sigma / (1 - sigma))               (sigma_max = sigmas[1] stands in at sigma = 1)
    mean    = x (1 + s_t^2 dt / (2 sigma)) + v (1 + s_t^2 (1 - sigma) / (2 sigma)) dt
    std     = s_t sqrt(-dt)

``noise_level`` is Flow-GRPO's ``a`` (0.7). The sigmas come from the pipeline's own
``FlowMatchEulerDiscreteScheduler`` (SD3's shift included). Evaluation can run more steps
(``eval_num_steps``: Flow-GRPO trains on 10 and evaluates 40) and, by default, the
deterministic ODE. The KL to the reference is exact per step with the step's std:
``mean_dims(||mu - mu_ref||^2) / (2 std^2)``; flow_grpo's code divides by ``s_t^2`` instead
(without the ``-dt`` factor), so its ``beta`` is ours times ``-dt`` (about 1/num_steps).

Models: a Stable Diffusion 3 pipeline folder or hub id (``SD3Transformer2DModel``, its VAE and
text encoders; T5 may be absent): the transformer is trained (LoRA or full), the rest stays
frozen outside the policy's state; prompts are encoded by the pipeline's ``encode_prompt``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from workbench.environment import EnvSpec
from workbench.policies.denoising import DTYPES, Cond, DenoisingConfig, DenoisingPolicy, Frozen, PromptCache
from workbench.policies.diffusion import pipeline_config, load_pipeline
from workbench.registry import ConfigError, POLICIES


def flow_sde_mean_std(
    v: torch.Tensor,  # [M, C, H, W] predicted velocity
    x: torch.Tensor,  # [M, C, H, W] latents at sigma
    sigma: torch.Tensor,  # [M]
    sigma_next: torch.Tensor,  # [M] (< sigma)
    sigma_max: float,  # sigmas[1]: stands in for sigma = 1 in s_t's denominator
    noise_level: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean [M, C, H, W], std [M]) of Flow-GRPO's SDE step; ``noise_level`` 0 gives the ODE's
    Euler step with std 0."""
    v, x = v.float(), x.float()
    shape = (-1,) + (1,) * (x.dim() - 1)
    s, s_next = sigma.float().view(shape), sigma_next.float().view(shape)
    dt = s_next - s
    s_t = torch.sqrt(s / (1 - torch.where(s == 1, torch.full_like(s, sigma_max), s))) * noise_level
    mean = x * (1 + s_t**2 / (2 * s) * dt) + v * (1 + s_t**2 * (1 - s) / (2 * s)) * dt
    std = s_t * torch.sqrt(-dt)
    return mean, std.view(-1)


@POLICIES.register("diffusion_flow")
class FlowSDEPolicy(DenoisingPolicy):
    lora_targets = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"]

    @dataclass
    class Config(DenoisingConfig):
        name: str = "diffusion_flow"
        pretrained: Optional[str] = None  # SD3 pipeline folder or hub id (required)
        resolution: Optional[int] = None  # image side in pixels; null = the model's default
        noise_level: float = 0.7  # Flow-GRPO's a in s_t = a sqrt(sigma / (1 - sigma)); must be > 0
        guidance_scale: float = 4.5  # classifier-free guidance (Flow-GRPO on SD3.5-M: 4.5)
        use_t5: bool = True  # load SD3's T5 text encoder (false saves ~9 GB; SD3 then sees zeros in its place)
        max_sequence_length: int = 128  # T5 tokens (when the pipeline has T5)
        eval_deterministic: bool = True  # evaluate with the ODE (noise_level 0), as Flow-GRPO does (eval_num_steps: 40)
        # num_steps 10 and timestep_fraction 0.99 in Flow-GRPO; lora r 32, alpha 64 on the attention projections

        def __post_init__(self) -> None:
            if not self.pretrained:
                raise ConfigError("policy.pretrained is required for diffusion_flow (an SD3 pipeline folder or hub id)")
            if not self.noise_level > 0:
                raise ConfigError(f"policy.noise_level={self.noise_level} cannot be trained: the ODE (noise_level 0) is "
                                  "deterministic and has no log-probability; Flow-GRPO uses 0.7")
            super().__post_init__()

    def __init__(self, cfg: "FlowSDEPolicy.Config", spec: Optional[EnvSpec] = None) -> None:
        super().__init__()
        index = pipeline_config(cfg.pretrained)
        no_t5 = not cfg.use_t5 or not (index.get("text_encoder_3") or [None])[0]
        pipe = load_pipeline(cfg.pretrained, DTYPES[cfg.weights_dtype], **({"text_encoder_3": None, "tokenizer_3": None} if no_t5 else {}))
        if not hasattr(pipe, "transformer") or not hasattr(pipe, "encode_prompt"):
            raise ConfigError(f"policy.pretrained={cfg.pretrained!r} is a {type(pipe).__name__}; diffusion_flow needs a "
                              "Stable Diffusion 3 pipeline")
        self.model = pipe.transformer if cfg.lora else pipe.transformer.float()
        self.frozen = Frozen(vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2,
                             text_encoder_3=getattr(pipe, "text_encoder_3", None))
        self.scheduler = pipe.scheduler
        vc = pipe.vae.config
        self.vae_scale, self.vae_shift = float(vc.scaling_factor), float(getattr(vc, "shift_factor", 0.0) or 0.0)
        factor = 2 ** (len(vc.block_out_channels) - 1)
        side = (cfg.resolution // factor) if cfg.resolution else int(self.model.config.sample_size)
        if cfg.resolution and cfg.resolution % (factor * self.model.config.patch_size):
            raise ConfigError(f"policy.resolution={cfg.resolution} must be a multiple of {factor * self.model.config.patch_size}")
        self.latent_shape = (int(self.model.config.in_channels), side, side)

        def encode(prompts):
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=self.device, do_classifier_free_guidance=False,
                                                      max_sequence_length=cfg.max_sequence_length)
            return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

        self.conditioner = PromptCache(encode, cfg.negative_prompt)
        self._setup(cfg)

    def _schedule(self, num_steps: int) -> Dict[str, torch.Tensor]:
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(num_steps)
        sigmas = sched.sigmas.float()  # [T + 1], ends at 0
        device = next(self.model.parameters()).device
        return {"timesteps": (sigmas[:-1] * sched.config.num_train_timesteps).to(device),
                "sigma": sigmas[:-1].to(device), "sigma_next": sigmas[1:].to(device),
                "sigma_max": sigmas[1:2].to(device)}

    def _forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = next(model.parameters()).dtype
        return model(hidden_states=x.to(dtype), timestep=t, **{k: v.to(dtype) for k, v in cond.items()}).sample

    def _step(self, pred, x_t, step, schedule, stochastic):
        level = self.cfg.noise_level if stochastic else 0.0
        return flow_sde_mean_std(pred, x_t, schedule["sigma"][step], schedule["sigma_next"][step],
                                 float(schedule["sigma_max"][0]), level)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.frozen.vae
        latents = x / self.vae_scale + self.vae_shift
        images = vae.decode(latents.to(next(vae.parameters()).dtype)).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)
