"""Diffusion denoising as a policy: DDIM with eta > 0 (DDPO, Black et al. 2023, arXiv 2305.13301).

One step of a trajectory is one denoising step ``x_t -> x_{t-1}``. With eta > 0 the DDIM step is
a Gaussian ``N(mu_theta(x_t, t, c), sigma_t^2 I)`` (DDIM eq. 12/16):

    x0_hat  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                 (clipped when the scheduler clips)
    sigma_t = eta * sqrt((1 - a_{t-1}) / (1 - a_t)) * sqrt(1 - a_t / a_{t-1})
    mu      = sqrt(a_{t-1}) x0_hat + sqrt(1 - a_{t-1} - sigma_t^2) eps

and ``log pi`` is the Gaussian log-density of the stored ``x_{t-1}``, averaged (not summed) over
the latent dimensions as every DDPO-family code base does (ddpo-pytorch ``ddim_with_logprob``).
Rollout and ``evaluate`` share :func:`ddim_step_mean_std` and :func:`gaussian_logp`, always in
float32, so re-scoring a stored step reproduces its log-prob.

The scheduler (diffusers ``DDIMScheduler``) supplies ``alphas_cumprod`` and the timesteps; it is
built with ``set_alpha_to_one=False, steps_offset=1`` (otherwise the last step has sigma 0 and a
NaN log-prob). ``sample_unit = "cell"``: the trainer hands ``evaluate`` single (row, step) cells.

Models: a ``UNet2DModel`` built from ``unet_config`` with random weights (tiny CPU models), or
loaded with ``from_pretrained(pretrained)``. Class conditioning (``num_class_embeds``) plays the
role of the prompt; classifier-free guidance mixes in a reserved null class. Text-conditioned
SD-class models (UNet2DConditionModel + text encoder + VAE latents) are not wired yet.

KL to a reference (``reference: frozen`` - a frozen copy of the initial UNet - or
``reference: lora_base`` with ``lora`` set - the same UNet with its LoRA adapters disabled) is
returned in closed form per step: ``mean_dims(||mu - mu_ref||^2) / (2 sigma_t^2)``.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from workbench.environment import EnvSpec
from workbench.objectives import PolicyOutput
from workbench.policies.base import Policy
from workbench.registry import ConfigError, POLICIES

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

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


def gaussian_logp(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[M] log N(x; mean, std^2 I) averaged over the non-batch dimensions (float32)."""
    s = std.float().view((-1,) + (1,) * (x.dim() - 1))
    z = (x.float() - mean.float()) / s
    logp = -0.5 * z * z - torch.log(s) - HALF_LOG_2PI
    return logp.flatten(1).mean(1)


def gaussian_kl_same_std(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[M] KL(N(mean, s^2) || N(mean_ref, s^2)) per dimension, averaged over dimensions."""
    s2 = std.float() ** 2
    return ((mean.float() - mean_ref.float()) ** 2).flatten(1).mean(1) / (2 * s2)


@dataclass
class Trajectory:
    """A batch of B denoising trajectories of T steps (step 0 = the noisiest)."""

    x_t: torch.Tensor  # [B, T, C, H, W] latents before each step
    t: torch.Tensor  # [B, T] long, scheduler timesteps
    x_prev: torch.Tensor  # [B, T, C, H, W] latents after each step (the action)
    logp: torch.Tensor  # [B, T] log-prob of x_prev under the sampling policy
    cond: torch.Tensor  # [B, T] long class ids (-1 = unconditional)
    train_mask: torch.Tensor  # [B, T] 1 on the steps chosen for training (timestep_fraction)


@POLICIES.register("diffusion_ddim")
class DiffusionDDIMPolicy(Policy):
    sample_unit = "cell"

    @dataclass
    class Config:
        name: str = "diffusion_ddim"
        pretrained: Optional[str] = None  # local path or hub id of a UNet2DModel (from_pretrained); else unet_config
        subfolder: Optional[str] = None  # e.g. "unet" inside a pipeline folder
        unet_config: Dict[str, Any] = field(default_factory=lambda: dict(TINY_UNET))  # UNet2DModel kwargs (random init)
        scheduler_config: Dict[str, Any] = field(default_factory=dict)  # DDIMScheduler kwargs (beta_schedule, clip_sample, ...)
        num_steps: int = 10  # DDIM denoising steps per sample (= T)
        eta: float = 1.0  # DDIM stochasticity; must be > 0 (1.0 = DDPM, as DDPO uses)
        guidance_scale: float = 1.0  # classifier-free guidance; > 1 needs class conditioning and a null class
        null_class: Optional[int] = None  # CFG's unconditional class id; default the last class embedding
        timestep_fraction: float = 1.0  # share of each trajectory's steps trained on (random per sample, DDPO)
        reference: Optional[str] = None  # KL reference: null | frozen | lora_base
        lora: Optional[Dict[str, Any]] = None  # peft LoraConfig kwargs (r, lora_alpha, target_modules); trains only the adapters
        init_seed: Optional[int] = None  # seed of the random init (default: the global torch RNG)

        def __post_init__(self) -> None:
            if not self.eta > 0:
                raise ConfigError(f"policy.eta={self.eta} cannot be trained: DDIM with eta == 0 is deterministic and has no "
                                  "log-probability; use eta > 0 (DDPO uses 1.0)")
            if self.num_steps < 1:
                raise ConfigError(f"policy.num_steps must be >= 1, got {self.num_steps}")
            if not 0 < self.timestep_fraction <= 1:
                raise ConfigError(f"policy.timestep_fraction must lie in (0, 1], got {self.timestep_fraction}")
            if self.guidance_scale < 1:
                raise ConfigError(f"policy.guidance_scale must be >= 1, got {self.guidance_scale}")
            if self.reference not in (None, "frozen", "lora_base"):
                raise ConfigError(f"policy.reference={self.reference!r} is not valid; valid choices: null, frozen, lora_base")
            if self.reference == "lora_base" and not self.lora:
                raise ConfigError("policy.reference=lora_base needs policy.lora (the base is the model with adapters off)")

    def __init__(self, cfg: "DiffusionDDIMPolicy.Config", spec: Optional[EnvSpec] = None) -> None:
        super().__init__()
        from diffusers import DDIMScheduler, UNet2DModel

        self.cfg = cfg
        if cfg.pretrained:
            kwargs = {"subfolder": cfg.subfolder} if cfg.subfolder else {}
            try:
                self.unet = UNet2DModel.from_pretrained(cfg.pretrained, **kwargs)
            except (OSError, ValueError) as e:
                raise ConfigError(f"policy.pretrained={cfg.pretrained!r}: cannot load a UNet2DModel ({e})") from None
            sched_kwargs = {}
            try:  # a pipeline folder carries its own scheduler config
                sched_kwargs = dict(DDIMScheduler.load_config(cfg.pretrained, subfolder="scheduler"))
            except (OSError, ValueError):
                pass
        else:
            try:
                if cfg.init_seed is not None:
                    with torch.random.fork_rng():
                        torch.manual_seed(cfg.init_seed)
                        self.unet = UNet2DModel(**cfg.unet_config)
                else:
                    self.unet = UNet2DModel(**cfg.unet_config)
            except TypeError as e:
                raise ConfigError(f"policy.unet_config: {e}") from None
            sched_kwargs = {}
        sched_kwargs.update(cfg.scheduler_config)
        sched_kwargs.update(_SCHEDULER_REQUIRED)
        self.scheduler = DDIMScheduler.from_config(sched_kwargs) if sched_kwargs else DDIMScheduler(**_SCHEDULER_REQUIRED)
        self.scheduler.set_timesteps(cfg.num_steps)
        sc = self.scheduler.config
        self.clip_sample = float(sc.clip_sample_range) if sc.clip_sample and not sc.thresholding else None
        if sc.prediction_type != "epsilon":
            raise ConfigError(f"policy.scheduler_config.prediction_type={sc.prediction_type!r}: only 'epsilon' is supported")
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.final_alpha = float(self.scheduler.final_alpha_cumprod)
        self.step_ratio = sc.num_train_timesteps // cfg.num_steps
        self.register_buffer("timesteps", self.scheduler.timesteps.clone().long(), persistent=False)

        uc = self.unet.config
        self.num_classes = int(uc.num_class_embeds) if getattr(uc, "num_class_embeds", None) else 0
        self.null_class = None
        if cfg.guidance_scale > 1:
            if not self.num_classes:
                raise ConfigError("policy.guidance_scale > 1 needs a class-conditioned UNet (unet_config.num_class_embeds)")
            self.null_class = self.num_classes - 1 if cfg.null_class is None else int(cfg.null_class)
            if not 0 <= self.null_class < self.num_classes:
                raise ConfigError(f"policy.null_class={self.null_class} outside the {self.num_classes} class embeddings")
        self.image_shape = (int(uc.in_channels), int(uc.sample_size), int(uc.sample_size)) if isinstance(uc.sample_size, int) \
            else (int(uc.in_channels), *map(int, uc.sample_size))

        if cfg.lora:
            self._add_lora(dict(cfg.lora))
        self.ref_unet: Optional[nn.Module] = None
        if cfg.reference == "frozen":
            self.ref_unet = copy.deepcopy(self.unet).requires_grad_(False).eval()

    # ------------------------------------------------------------------ construction helpers
    def _add_lora(self, options: Dict[str, Any]) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        options.setdefault("r", 4)
        options.setdefault("lora_alpha", options["r"])
        options.setdefault("target_modules", ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"])
        try:
            lora_cfg = LoraConfig(**options)
        except TypeError as e:
            raise ConfigError(f"policy.lora: {e}") from None
        self.unet.requires_grad_(False)
        try:
            self.unet = inject_adapter_in_model(lora_cfg, self.unet)
        except ValueError as e:
            raise ConfigError(f"policy.lora: {e}") from None
        for n, p in self.unet.named_parameters():
            p.requires_grad_("lora_" in n)

    @contextmanager
    def _adapters_disabled(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)

    def reset_reference(self) -> None:
        if self.ref_unet is not None:
            self.ref_unet.load_state_dict(self.unet.state_dict())

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    # ------------------------------------------------------------------ the step
    def _alphas(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        t = t.long()
        prev = t - self.step_ratio
        a_t = self.alphas_cumprod[t]
        a_prev = torch.where(prev >= 0, self.alphas_cumprod[prev.clamp(min=0)], torch.full_like(a_t, self.final_alpha))
        return a_t, a_prev

    def _eps(self, unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Noise prediction, with classifier-free guidance when guidance_scale > 1."""
        labels = None
        if self.num_classes:
            fallback = self.null_class if self.null_class is not None else 0
            labels = torch.where(cond >= 0, cond, torch.full_like(cond, fallback)).long()
        if self.null_class is None:
            return unet(x_t, t, class_labels=labels).sample
        both = unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                    class_labels=torch.cat([torch.full_like(labels, self.null_class), labels])).sample
        uncond, conditional = both.chunk(2)
        return uncond + self.cfg.guidance_scale * (conditional - uncond)

    def step_mean_std(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, unet: Optional[nn.Module] = None):
        eps = self._eps(unet or self.unet, x_t, t, cond)
        a_t, a_prev = self._alphas(t)
        return ddim_step_mean_std(eps, x_t, a_t, a_prev, self.cfg.eta, self.clip_sample)

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Trajectory]:
        """Sample B images for class ids ``cond`` [B] (-1 or no conditioning: unconditional).

        Returns (images [B, C, H, W] float in [0, 1], the trajectory). All randomness comes from
        ``generator`` (a CPU generator; noise is moved to the policy's device).
        """
        device = self.device
        cond = torch.as_tensor(cond, dtype=torch.long).to(device)
        if self.num_classes and int(cond.max()) >= self.num_classes:
            raise ConfigError(f"class id {int(cond.max())} but the UNet has num_class_embeds={self.num_classes}")
        if self.null_class is not None and bool((cond == self.null_class).any()):
            raise ConfigError(f"class id {self.null_class} is reserved as the null class of classifier-free guidance")
        B, T = cond.shape[0], self.cfg.num_steps

        def noise(*shape):
            return torch.randn(*shape, generator=generator).to(device)

        x = noise(B, *self.image_shape)
        xs, prevs, logps = [], [], []
        for t in self.timesteps:
            tt = t.expand(B).to(device)
            mean, std = self.step_mean_std(x, tt, cond)
            x_prev = mean + std.view(-1, 1, 1, 1) * noise(*x.shape)
            logps.append(gaussian_logp(x_prev, mean, std))
            xs.append(x)
            prevs.append(x_prev)
            x = x_prev
        n_train = max(1, int(round(T * self.cfg.timestep_fraction)))
        if n_train < T:  # DDPO: a random subset of steps per sample
            order = torch.argsort(torch.rand(B, T, generator=generator), dim=1)
            train_mask = (order < n_train).float()
        else:
            train_mask = torch.ones(B, T)
        traj = Trajectory(
            x_t=torch.stack(xs, 1), t=self.timesteps.view(1, T).expand(B, T).clone(), x_prev=torch.stack(prevs, 1),
            logp=torch.stack(logps, 1), cond=cond.view(B, 1).expand(B, T).clone(), train_mask=train_mask.to(device),
        )
        images = (x.float() / 2 + 0.5).clamp(0, 1)
        return images, traj

    # ------------------------------------------------------------------ scoring
    def evaluate(self, policy_inputs: Dict[str, torch.Tensor]) -> PolicyOutput:
        x_t = policy_inputs["x_t"]  # [M, 1, C, H, W]
        x_prev = policy_inputs["x_prev"]
        M, S = x_t.shape[:2]
        flat = lambda v: v.reshape(M * S, *v.shape[2:])  # noqa: E731
        x_t, x_prev, t, cond = flat(x_t), flat(x_prev), flat(policy_inputs["t"]).long(), flat(policy_inputs["cond"]).long()
        mean, std = self.step_mean_std(x_t, t, cond)
        logp = gaussian_logp(x_prev, mean, std)
        entropy = (torch.log(std.float()) + 0.5 + HALF_LOG_2PI).expand_as(logp)  # per dimension, as logp
        kl = None
        if self.cfg.reference is not None:
            with torch.no_grad():
                if self.ref_unet is not None:
                    mean_ref, _ = self.step_mean_std(x_t, t, cond, unet=self.ref_unet)
                else:
                    with self._adapters_disabled():
                        mean_ref, _ = self.step_mean_std(x_t, t, cond)
            kl = gaussian_kl_same_std(mean, mean_ref, std).view(M, S)
        return PolicyOutput(logp=logp.view(M, S), entropy=entropy.reshape(M, S), kl=kl)

    def param_groups(self) -> List[Dict[str, Any]]:
        return [{"params": [p for p in self.unet.parameters() if p.requires_grad]}]
