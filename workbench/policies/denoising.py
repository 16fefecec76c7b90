"""What every denoising policy shares: Gaussian steps, trained-step selection, branching, CFG,
LoRA, the KL reference and the rollout/re-scoring loop.

A denoising chain of T steps is a trajectory whose actions are the latents ``x_{t-1}`` drawn
from a Gaussian ``N(mu_theta(x_t, t, c), std_t^2 I)``. The subclasses say how the mean and std
come out of the model (DDIM with eta > 0: :mod:`workbench.policies.diffusion`; the flow-matching
SDE of Flow-GRPO: :mod:`workbench.policies.flow`); everything else lives here, once:

- ``log pi`` of a step is the Gaussian log-density of the stored ``x_{t-1}`` **averaged** over
  the latent dimensions (every DDPO-family code base does this), in float32, by the same
  function at sampling and at re-evaluation, so the first PPO ratio is exactly 1.
- KL to the reference (a frozen copy, or the same model with LoRA off) is exact per step:
  ``mean_dims(||mu - mu_ref||^2) / (2 std^2)``.
- Which steps are trained: the step selectors of :mod:`workbench.stages.step_selectors`, a
  window of step indices (``train_window``), B²-DiffuRL's backward progressive window
  (``progressive_start``: the last k steps first, extended back to all steps over
  ``progressive_iterations`` collects), and inside it DDPO's random ``timestep_fraction``.
- Branch sampling (B²-DiffuRL): rows with the same ``trunk`` id share their noise and every
  step before the first trained one, then branch; their rewards differ only through the
  trained steps, so a group-relative advantage over a trunk credits exactly those steps.
- Conditioning: a *conditioner* turns prompts (class ids, or strings through a pipeline's own
  text encoders) into per-row tensors named after the model's forward arguments; they go to
  the batch's ``row_inputs`` (stored once per row, not per step). Classifier-free guidance
  mixes in the conditioner's null condition.

Policy inputs per cell: ``x_t``, ``x_prev`` [M, 1, C, H, W], ``step`` [M, 1] (index into the
training schedule) and the condition tensors [M, 1, ...].
"""
from __future__ import annotations

import abc
import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from workbench.batch import PolicyOutput
from workbench.policies.base import DenoisingSampler
from workbench.fields import check_choices, choice
from workbench.registry import ConfigError
from workbench.stages import STEP_SELECTORS
from workbench.stages.step_selectors import TimestepFractionConfig, WindowConfig

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
Cond = Dict[str, torch.Tensor]


def gaussian_logp(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[M] log N(x; mean, std^2 I) averaged over the non-batch dimensions (float32); std [M]."""
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
    """B denoising chains of T steps (step 0 = the noisiest)."""

    x_t: torch.Tensor  # [B, T, C, H, W] latents before each step
    x_prev: torch.Tensor  # [B, T, C, H, W] latents after each step (the action)
    logp: torch.Tensor  # [B, T] log-prob of x_prev under the sampling policy (mean over dims)
    step: torch.Tensor  # [B, T] long, index of the step in the training schedule
    train_mask: torch.Tensor  # [B, T] 1 on the steps chosen for training
    cond: Cond  # per-row condition tensors [B, ...], keyed by the model's forward arguments


class ClassConditioner:
    """Class ids as prompts (``UNet2DModel`` with ``num_class_embeds``); -1 = unconditional,
    which uses the null class when there is one, else class 0."""

    def __init__(self, num_classes: int, null_class: Optional[int]) -> None:
        self.num_classes, self.null_class = num_classes, null_class

    def encode(self, prompts: Sequence[Any], device: torch.device) -> Cond:
        if not self.num_classes:
            return {}
        try:
            ids = torch.tensor([int(p) for p in prompts], dtype=torch.long)
        except (TypeError, ValueError):
            raise ConfigError(f"this UNet is class-conditioned: prompts must be class ids, got {list(prompts)[:3]!r}") from None
        if int(ids.max()) >= self.num_classes:
            raise ConfigError(f"class id {int(ids.max())} but the UNet has num_class_embeds={self.num_classes}")
        if self.null_class is not None and bool((ids == self.null_class).any()):
            raise ConfigError(f"class id {self.null_class} is reserved as the null class of classifier-free guidance")
        fallback = self.null_class if self.null_class is not None else 0
        return {"class_labels": torch.where(ids >= 0, ids, torch.full_like(ids, fallback)).to(device)}

    def null(self, n: int, device: torch.device) -> Cond:
        return {"class_labels": torch.full((n,), int(self.null_class), dtype=torch.long, device=device)}


class PromptCache:
    """Text prompts -> embeddings through a frozen encoder, remembered per prompt (the text
    encoders never train, so re-encoding a repeated prompt would only cost time)."""

    def __init__(self, encode_fn, negative_prompt: str = "", max_size: int = 4096) -> None:
        self.encode_fn, self.negative_prompt, self.max_size = encode_fn, negative_prompt, max_size
        self.cache: Dict[str, Cond] = {}

    def _one(self, prompt: str) -> Cond:
        if prompt not in self.cache:
            if len(self.cache) >= self.max_size:
                self.cache.pop(next(iter(self.cache)))
            with torch.no_grad():
                self.cache[prompt] = {k: v[0].detach() for k, v in self.encode_fn([prompt]).items()}
        return self.cache[prompt]

    def encode(self, prompts: Sequence[Any], device: torch.device) -> Cond:
        if any(not isinstance(p, str) for p in prompts):
            raise ConfigError(f"this model is text-conditioned: prompts must be strings, got {list(prompts)[:3]!r}")
        rows = [self._one(p) for p in prompts]
        return {k: torch.stack([r[k] for r in rows]).to(device) for k in rows[0]}

    def null(self, n: int, device: torch.device) -> Cond:
        one = self._one(self.negative_prompt)
        return {k: v.unsqueeze(0).expand(n, *v.shape).to(device) for k, v in one.items()}


class Frozen:
    """Holds modules outside the policy's module tree: frozen parts (VAE, text encoders) move
    with the policy (``.to``) but stay out of its state_dict and its optimiser."""

    def __init__(self, **modules: nn.Module) -> None:
        self.modules = {k: m.requires_grad_(False).eval() for k, m in modules.items() if m is not None}

    def __getattr__(self, name: str):
        try:
            return self.__dict__["modules"][name]
        except KeyError:
            raise AttributeError(name) from None


def inject_lora(model: nn.Module, options: Dict[str, Any], default_targets: List[str]) -> nn.Module:
    """Add peft LoRA adapters to ``model`` and leave only them trainable (in float32)."""
    from peft import LoraConfig, inject_adapter_in_model

    options = dict(options)
    options.setdefault("r", 4)
    options.setdefault("lora_alpha", options["r"])
    options.setdefault("target_modules", list(default_targets))
    try:
        lora_cfg = LoraConfig(**options)
    except TypeError as e:
        raise ConfigError(f"policy.lora: {e}") from None
    model.requires_grad_(False)
    try:
        model = inject_adapter_in_model(lora_cfg, model)
    except ValueError as e:
        raise ConfigError(f"policy.lora: {e}") from None
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
        if "lora_" in n:
            p.data = p.data.float()
    return model


class DenoisingPolicy(DenoisingSampler):
    """Base of the denoising policies. A subclass builds ``self.model`` (the trained denoiser),
    ``self.conditioner``, and implements ``_schedule``, ``_forward``, ``_step`` and
    ``_decode``; see the module docstring for what the base does with them."""

    sample_unit = "cell"
    lora_targets: List[str] = []

    def _setup(self, cfg) -> None:
        """Options every denoising config has (called by subclasses after the model exists)."""
        self.cfg = cfg
        self.frozen = getattr(self, "frozen", None) or Frozen()
        if cfg.lora:
            self.model = inject_lora(self.model, dict(cfg.lora), self.lora_targets)
            base_keys = {f"model.{n}" for n, p in self.model.named_parameters() if not p.requires_grad}

            def drop_base(module, state, prefix, local_metadata) -> None:
                for k in base_keys:  # checkpoints hold the adapters, not gigabytes of frozen base weights
                    state.pop(prefix + k, None)

            def allow_missing_base(module, keys) -> None:
                keys.missing_keys[:] = [k for k in keys.missing_keys if k not in base_keys]

            self.register_state_dict_post_hook(drop_base)
            self.register_load_state_dict_post_hook(allow_missing_base)
        self.ref_model: Optional[nn.Module] = None
        if cfg.reference == "frozen":
            self.ref_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.schedule = self._schedule(cfg.num_steps)

    def _apply(self, fn, recurse: bool = True):
        """``.to(device)`` and friends also move the frozen parts and the schedule (kept float32)."""
        super()._apply(fn, recurse)
        for m in getattr(self, "frozen", Frozen()).modules.values():
            m._apply(fn)
        if hasattr(self, "schedule"):
            self.schedule = {k: fn(v).float() if v.is_floating_point() else fn(v) for k, v in self.schedule.items()}
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reset_reference(self) -> None:
        if self.ref_model is not None:
            self.ref_model.load_state_dict(self.model.state_dict())

    def param_groups(self) -> List[Dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    @contextmanager
    def _adapters_disabled(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _schedule(self, num_steps: int) -> Dict[str, torch.Tensor]:
        """Per-step constants of a chain of ``num_steps`` (timesteps, alphas or sigmas)."""

    @abc.abstractmethod
    def _forward(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The model's raw prediction (noise or velocity) [M, C, H, W] at timesteps ``t`` [M]."""

    @abc.abstractmethod
    def _step(self, pred: torch.Tensor, x_t: torch.Tensor, step: torch.Tensor, schedule, stochastic: bool):
        """(mean [M, C, H, W], std [M]) of the step from ``x_t`` at step indices ``step`` [M]."""

    @abc.abstractmethod
    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Final latents -> images [B, 3, H, W] in [0, 1]."""

    def _initial_latents(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        return torch.randn(n, *self.latent_shape, generator=generator).to(self.device)

    # ------------------------------------------------------------------ the step
    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, model: Optional[nn.Module] = None) -> torch.Tensor:
        """The model's prediction with classifier-free guidance when ``guidance_scale`` > 1."""
        model = model or self.model
        g = self.cfg.guidance_scale
        if g <= 1:
            return self._forward(model, x, t, cond)
        null = self.conditioner.null(x.shape[0], x.device)
        both = self._forward(model, torch.cat([x, x]), torch.cat([t, t]), {k: torch.cat([null[k], cond[k]]) for k in cond})
        uncond, conditional = both.chunk(2)
        return uncond + g * (conditional - uncond)

    def step_mean_std(self, x_t: torch.Tensor, step: torch.Tensor, cond: Cond, model: Optional[nn.Module] = None,
                      schedule=None, stochastic: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        schedule = self.schedule if schedule is None else schedule
        t = schedule["timesteps"][step.long()]
        return self._step(self.predict(x_t, t, cond, model), x_t, step.long(), schedule, stochastic)

    # ------------------------------------------------------------------ rollout
    def train_mask(self, n: int, iteration: int, generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, int]:
        """([n, T] 1 on trained steps; the window's first step, where branches split).

        Two step selectors (:mod:`workbench.stages.step_selectors`) choose them in turn: the
        ``window`` (``train_window``, B²'s ``progressive_start``), then DDPO's random
        ``timestep_fraction`` of it, the only one that draws from ``generator``."""
        cfg = self.cfg
        window = WindowConfig(window=cfg.train_window, progressive_start=cfg.progressive_start,
                              progressive_iterations=cfg.progressive_iterations)
        mask = STEP_SELECTORS.get("window")(torch.ones(n, cfg.num_steps), iteration, generator, window)
        first = int(mask[0].nonzero()[0])  # the steps before the window are shared by branches, never trained
        fraction = TimestepFractionConfig(fraction=cfg.timestep_fraction)
        return STEP_SELECTORS.get("timestep_fraction")(mask, iteration, generator, fraction), first

    @torch.no_grad()
    def sample(self, prompts, generator: Optional[torch.Generator] = None, iteration: int = 0,
               trunks: Optional[torch.Tensor] = None, evaluation: bool = False) -> Tuple[torch.Tensor, Trajectory]:
        """Sample one image per prompt; returns (images [B, 3, H, W] in [0, 1], the trajectory).

        ``prompts``: class ids or strings (a list or a tensor of ids). ``trunks`` [B]: rows with
        the same id share their chain before the first trained step (branch sampling).
        ``evaluation``: use the evaluation chain (``eval_num_steps``, ``eval_deterministic``:
        Flow-GRPO trains on 10 stochastic steps and evaluates 40 deterministic ones); nothing
        is marked for training then.
        All randomness comes from ``generator`` (CPU), so a seeded evaluation repeats exactly.
        """
        prompts = prompts.tolist() if isinstance(prompts, torch.Tensor) else list(prompts)
        device, B = self.device, len(prompts)
        T = (self.cfg.eval_num_steps or self.cfg.num_steps) if evaluation else self.cfg.num_steps
        stochastic = not (evaluation and self.cfg.eval_deterministic)
        schedule = self.schedule if T == self.cfg.num_steps else self._schedule(T)
        cond = self.conditioner.encode(prompts, device)
        mask, first = (torch.zeros(B, T), 0) if evaluation else self.train_mask(B, iteration, generator)
        inverse, rep, branch_at = None, None, 0
        if trunks is not None:
            _, inverse = torch.unique(torch.as_tensor(trunks).cpu(), return_inverse=True)
            branch_at = first  # the steps before the window are shared and never trained
            n_trunks = int(inverse.max()) + 1
            rep = torch.zeros(n_trunks, dtype=torch.long).scatter_(0, inverse.flip(0), torch.arange(B).flip(0)).to(device)
            inverse = inverse.to(device)
            x = self._initial_latents(n_trunks, generator)[inverse]
        else:
            x = self._initial_latents(B, generator)
        xs, prevs, logps = [], [], []
        for i in range(T):
            step = torch.full((B,), i, dtype=torch.long, device=device)
            shared = inverse is not None and i < branch_at
            rows = rep if shared else slice(None)  # before the branch point: one computation per trunk
            mean, std = self.step_mean_std(x[rows], step[rows], {k: v[rows] for k, v in cond.items()}, schedule=schedule,
                                           stochastic=stochastic)
            x_prev = mean + std.view(-1, *[1] * (mean.dim() - 1)) * torch.randn(mean.shape, generator=generator).to(device)
            if shared:
                mean, std, x_prev = mean[inverse], std[inverse], x_prev[inverse]
            logps.append(gaussian_logp(x_prev, mean, std) if stochastic else torch.zeros(B, device=device))
            xs.append(x)
            prevs.append(x_prev)
            x = x_prev
        traj = Trajectory(
            x_t=torch.stack(xs, 1), x_prev=torch.stack(prevs, 1), logp=torch.stack(logps, 1),
            step=torch.arange(T, device=device).view(1, T).expand(B, T).clone(), train_mask=mask.to(device), cond=cond,
        )
        return self._decode(x), traj

    # ------------------------------------------------------------------ scoring
    def log_probs(self, policy_inputs: Dict[str, torch.Tensor]) -> PolicyOutput:
        M, S = policy_inputs["x_t"].shape[:2]
        flat = {k: v.reshape(M * S, *v.shape[2:]) for k, v in policy_inputs.items()}
        x_t, x_prev, step = flat.pop("x_t"), flat.pop("x_prev"), flat.pop("step").long()
        mean, std = self.step_mean_std(x_t, step, flat)
        logp = gaussian_logp(x_prev, mean, std)
        entropy = (torch.log(std.float()) + 0.5 + HALF_LOG_2PI).expand_as(logp)  # per dimension, as logp
        kl = None
        if self.cfg.reference is not None:
            with torch.no_grad():
                if self.ref_model is not None:
                    mean_ref, _ = self.step_mean_std(x_t, step, flat, model=self.ref_model)
                else:
                    with self._adapters_disabled():
                        mean_ref, _ = self.step_mean_std(x_t, step, flat)
            kl = gaussian_kl_same_std(mean, mean_ref, std).view(M, S)
        return PolicyOutput(logp=logp.view(M, S), entropy=entropy.reshape(M, S), kl=kl)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DenoisingConfig:
    """Options every denoising policy has; a policy's ``Config`` adds its model's options and
    may change defaults (each validated here, one clear line each)."""

    num_steps: int = 10  # denoising steps per training sample (= T)
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = off
    negative_prompt: str = ""  # text models: CFG's unconditional prompt
    timestep_fraction: float = 1.0  # share of the trained window's steps trained on (random per sample, DDPO)
    train_window: Optional[List[int]] = None  # [first, end) step indices trained (negative: from the end); null = all
    progressive_start: Optional[int] = None  # B²-DiffuRL: train the last k steps first, growing back to all
    progressive_iterations: int = 100  # collects over which the progressive window reaches all steps
    eval_num_steps: Optional[int] = None  # steps of evaluation chains; null = num_steps
    eval_deterministic: bool = False  # evaluate with the deterministic chain (eta 0 / the ODE)
    reference: Optional[str] = choice(None, "frozen", "lora_base")  # KL reference
    lora: Optional[Dict[str, Any]] = None  # peft LoraConfig kwargs (r, lora_alpha, target_modules); trains only the adapters
    weights_dtype: str = choice(*DTYPES)  # dtype of loaded weights that do not train (VAE, text encoders; the denoiser under LoRA)

    def __post_init__(self) -> None:
        check_choices(self, "policy")
        if self.num_steps < 1:
            raise ConfigError(f"policy.num_steps must be >= 1, got {self.num_steps}")
        if self.eval_num_steps is not None and self.eval_num_steps < 1:
            raise ConfigError(f"policy.eval_num_steps must be >= 1, got {self.eval_num_steps}")
        if not 0 < self.timestep_fraction <= 1:
            raise ConfigError(f"policy.timestep_fraction must lie in (0, 1], got {self.timestep_fraction}")
        if self.guidance_scale < 1:
            raise ConfigError(f"policy.guidance_scale must be >= 1, got {self.guidance_scale}")
        if self.reference == "lora_base" and not self.lora:
            raise ConfigError("policy.reference=lora_base needs policy.lora (the base is the model with adapters off)")
        if self.train_window is not None:
            if len(self.train_window) != 2:
                raise ConfigError(f"policy.train_window must be [first, end), got {self.train_window}")
            first, end = (int(w) + self.num_steps if int(w) < 0 else int(w) for w in self.train_window)
            if not 0 <= first < end <= self.num_steps:
                raise ConfigError(f"policy.train_window={list(self.train_window)} selects no steps of {self.num_steps}")
        if self.progressive_start is not None and self.progressive_start < 1:
            raise ConfigError(f"policy.progressive_start must be >= 1, got {self.progressive_start}")
        if self.progressive_iterations < 1:
            raise ConfigError(f"policy.progressive_iterations must be >= 1, got {self.progressive_iterations}")

    @property
    def has_reference(self) -> bool:
        """Whether the policy keeps a KL reference (``algo.beta > 0`` needs one)."""
        return self.reference is not None
