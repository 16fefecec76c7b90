"""Diffusion denoising as a policy: DDIM with eta > 0 (DDPO, Black et al. 2023, arXiv 2305.13301).

One step of a trajectory is one denoising step ``x_t -> x_{t-1}``. With eta > 0 the DDIM step is
a Gaussian ``N(mu_theta(x_t, t, c), sigma_t^2 I)`` (DDIM eq. 12/16):

    x0_hat  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                 (clipped when the scheduler clips)
    sigma_t = eta * sqrt((1 - a_{t-1}) / (1 - a_t)) * sqrt(1 - a_t / a_{t-1})
    mu      = sqrt(a_{t-1}) x0_hat + sqrt(1 - a_{t-1} - sigma_t^2) eps

The scheduler (diffusers ``DDIMScheduler``) supplies ``alphas_cumprod`` and the timesteps; it is
built with ``set_alpha_to_one=False, steps_offset=1`` (otherwise the last step has sigma 0 and a
NaN log-prob). Log-probs, KL, trained steps, branching and guidance: :mod:`.denoising`.

Models (``pretrained``, a local path or hub id, else ``unet_config``):

- a ``UNet2DModel`` (pixel space) built from ``unet_config`` with random weights (tiny CPU
  models) or loaded with ``from_pretrained``; class conditioning (``num_class_embeds``) plays
  the prompt, and classifier-free guidance mixes in a reserved null class;
- a Stable Diffusion pipeline folder (``model_index.json``: SD-1.x/2.x): the
  ``UNet2DConditionModel`` is trained (LoRA or full), the VAE and text encoder stay frozen
  outside the policy's state; prompts are strings encoded by the pipeline's own
  ``encode_prompt`` and the negative prompt is CFG's unconditional branch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from workbench.environment import EnvSpec
from workbench.policies.denoising import (
    DTYPES, ClassConditioner, Cond, DenoisingConfig, DenoisingPolicy, Frozen, PromptCache, gaussian_kl_same_std, gaussian_logp,
)
from workbench.registry import ConfigError, POLICIES

__all__ = ["DiffusionDDIMPolicy", "ddim_step_mean_std", "gaussian_logp", "gaussian_kl_same_std", "load_pipeline", "TINY_UNET"]

# DDPO-style log-probs need these (see the module docstring); user scheduler options may not undo them
_SCHEDULER_REQUIRED = {"set_alpha_to_one": False, "steps_offset": 1}

TINY_UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
}


def ddim_step_mean_std(
    eps: torch.Tensor,  # [M, C, H, W] predicted noise
    x_t: torch.Tensor,  # [M, C, H, W]
    alpha_t: torch.Tensor,  # [M] alphas_cumprod at t
    alpha_prev: torch.Tensor,  # [M] alphas_cumprod at t - 1 (the final alpha at the last step)
    eta: float,
    clip_sample: Optional[float],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean [M, C, H, W], std [M]) of the DDIM step x_t -> x_{t-1}, in float32.

    The same computation as diffusers' ``DDIMScheduler.step`` (``use_clipped_model_output=False``),
    written out so rollout and re-evaluation share it and the std is available for the log-prob.
    """
    eps, x_t = eps.float(), x_t.float()
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    a_t, a_prev = alpha_t.float().view(shape), alpha_prev.float().view(shape)
    x0 = (x_t - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * torch.sqrt(variance)
    mean = torch.sqrt(a_prev) * x0 + torch.sqrt((1 - a_prev - std**2).clamp(min=0)) * eps
    return mean, std.view(-1)


def load_pipeline(path: str, dtype: torch.dtype, **kwargs):
    """``DiffusionPipeline.from_pretrained`` with one clear line when it cannot load."""
    import warnings

    from diffusers import DiffusionPipeline

    try:
        with warnings.catch_warnings():  # newer diffusers renames torch_dtype to dtype; both load the same
            warnings.simplefilter("ignore", FutureWarning)
            return DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, **kwargs)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"policy.pretrained={path!r}: cannot load a diffusers pipeline ({str(e).splitlines()[0]})") from None


@POLICIES.register("diffusion_ddim")
class DiffusionDDIMPolicy(DenoisingPolicy):
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"]

    @dataclass
    class Config(DenoisingConfig):
        name: str = "diffusion_ddim"
        pretrained: Optional[str] = None  # UNet2DModel folder, SD pipeline folder (model_index.json) or hub id; else unet_config
        subfolder: Optional[str] = None  # e.g. "unet" for a UNet2DModel inside a pipeline-like folder
        unet_config: Dict[str, Any] = field(default_factory=lambda: dict(TINY_UNET))  # UNet2DModel kwargs (random init)
        scheduler_config: Dict[str, Any] = field(default_factory=dict)  # DDIMScheduler kwargs (beta_schedule, clip_sample, ...)
        eta: float = 1.0  # DDIM stochasticity; must be > 0 (1.0 = DDPM, as DDPO uses)
        null_class: Optional[int] = None  # class models: CFG's unconditional class id; default the last class embedding
        init_seed: Optional[int] = None  # seed of the random init (default: the global torch RNG)
        # (DDPO on SD uses guidance_scale 5; it evaluates with its training sampler: eval_deterministic false)

        def __post_init__(self) -> None:
            if not self.eta > 0:
                raise ConfigError(f"policy.eta={self.eta} cannot be trained: DDIM with eta == 0 is deterministic and has no "
                                  "log-probability; use eta > 0 (DDPO uses 1.0)")
            super().__post_init__()

    def __init__(self, cfg: "DiffusionDDIMPolicy.Config", spec: Optional[EnvSpec] = None) -> None:
        super().__init__()
        from diffusers import DDIMScheduler

        sched_kwargs: Dict[str, Any] = {}
        self.vae_scale = None
        index = pipeline_config(cfg.pretrained) if cfg.pretrained else {}
        if index:  # a pipeline folder or hub id (model_index.json)
            dtype = DTYPES[cfg.weights_dtype]
            pipe = load_pipeline(cfg.pretrained, dtype, safety_checker=None, requires_safety_checker=False) \
                if "StableDiffusion" in str(index.get("_class_name", "")) else load_pipeline(cfg.pretrained, dtype)
            if not hasattr(pipe, "unet") or not hasattr(pipe, "encode_prompt"):
                raise ConfigError(f"policy.pretrained={cfg.pretrained!r} is a {type(pipe).__name__}; diffusion_ddim needs a "
                                  "UNet text-to-image pipeline (Stable Diffusion 1.x/2.x); use diffusion_flow for SD3")
            self.model = pipe.unet if cfg.lora else pipe.unet.float()
            self.frozen = Frozen(vae=pipe.vae, text_encoder=pipe.text_encoder)
            self.vae_scale = float(pipe.vae.config.scaling_factor)
            sched_kwargs = dict(pipe.scheduler.config)

            def encode(prompts):
                embeds, _ = pipe.encode_prompt(prompts, self.device, 1, False)
                return {"encoder_hidden_states": embeds}

            self.conditioner = PromptCache(encode, cfg.negative_prompt)
            factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
            size = self.model.config.sample_size
            self.latent_shape = (int(self.model.config.in_channels), int(size), int(size))
            self.image_size = int(size) * factor
        else:
            self.model = self._load_unet(cfg)
            if cfg.pretrained:
                try:  # a pipeline-like folder carries its own scheduler config
                    sched_kwargs = dict(DDIMScheduler.load_config(cfg.pretrained, subfolder="scheduler"))
                except (OSError, ValueError):
                    pass
            uc = self.model.config
            num_classes = int(uc.num_class_embeds) if getattr(uc, "num_class_embeds", None) else 0
            null_class = None
            if cfg.guidance_scale > 1:
                if not num_classes:
                    raise ConfigError("policy.guidance_scale > 1 needs a class-conditioned UNet (unet_config.num_class_embeds)")
                null_class = num_classes - 1 if cfg.null_class is None else int(cfg.null_class)
                if not 0 <= null_class < num_classes:
                    raise ConfigError(f"policy.null_class={null_class} outside the {num_classes} class embeddings")
            self.conditioner = ClassConditioner(num_classes, null_class)
            size = uc.sample_size
            self.latent_shape = (int(uc.in_channels), int(size), int(size)) if isinstance(size, int) \
                else (int(uc.in_channels), *map(int, size))
        sched_kwargs.update(cfg.scheduler_config)
        sched_kwargs.update(_SCHEDULER_REQUIRED)
        self.scheduler = DDIMScheduler.from_config(sched_kwargs)
        sc = self.scheduler.config
        if sc.prediction_type != "epsilon":
            raise ConfigError(f"policy.scheduler_config.prediction_type={sc.prediction_type!r}: only 'epsilon' is supported")
        self.clip_sample = float(sc.clip_sample_range) if sc.clip_sample and not sc.thresholding else None
        self._setup(cfg)

    @staticmethod
    def _load_unet(cfg) -> nn.Module:
        from diffusers import UNet2DModel

        if cfg.pretrained:
            kwargs = {"subfolder": cfg.subfolder} if cfg.subfolder else {}
            try:
                return UNet2DModel.from_pretrained(cfg.pretrained, **kwargs)
            except (OSError, ValueError) as e:
                raise ConfigError(f"policy.pretrained={cfg.pretrained!r}: cannot load a UNet2DModel ({e})") from None
        try:
            if cfg.init_seed is None:
                return UNet2DModel(**cfg.unet_config)
            with torch.random.fork_rng():
                torch.manual_seed(cfg.init_seed)
                return UNet2DModel(**cfg.unet_config)
        except TypeError as e:
            raise ConfigError(f"policy.unet_config: {e}") from None

    # ------------------------------------------------------------------ the DDIM step
    def _schedule(self, num_steps: int) -> Dict[str, torch.Tensor]:
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(num_steps)
        ac = sched.alphas_cumprod.float()
        t = sched.timesteps.long()
        prev = t - sched.config.num_train_timesteps // num_steps
        a_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], torch.full_like(ac[t], float(sched.final_alpha_cumprod)))
        device = next(self.model.parameters()).device
        return {"timesteps": t.to(device), "alpha_t": ac[t].to(device), "alpha_prev": a_prev.to(device)}

    def _forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = next(model.parameters()).dtype
        cond = {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}
        return model(x.to(dtype), t, **cond).sample

    def _step(self, pred, x_t, step, schedule, stochastic):
        eta = self.cfg.eta if stochastic else 0.0
        return ddim_step_mean_std(pred, x_t, schedule["alpha_t"][step], schedule["alpha_prev"][step], eta, self.clip_sample)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae_scale is None:
            return (x.float() / 2 + 0.5).clamp(0, 1)
        vae = self.frozen.vae
        images = vae.decode((x / self.vae_scale).to(next(vae.parameters()).dtype)).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)


def pipeline_config(path: str) -> Dict[str, Any]:
    """The pipeline's model_index.json, local or a cached hub id ({} when there is none: e.g. a
    bare UNet folder)."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(path))
    except (OSError, ValueError):
        return {}

