"""Step selectors: choose which steps of each row are trained (denoising steps today).

Signature: ``fn(mask [n, T], iteration: int, generator: torch.Generator | None, cfg) -> mask
[n, T]``: each selector narrows the 0/1 mask of trainable steps it is given (start from all
ones), so selectors chain. Randomness comes only from ``generator``, so a seeded run repeats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from workbench.registry import ConfigError
from workbench.stages.base import STEP_SELECTORS


def trained_window(num_steps: int, iteration: int, window: Optional[Sequence[int]], progressive_start: Optional[int],
                   progressive_iterations: int) -> Tuple[int, int]:
    """(first, end) step indices trained at this ``iteration`` (end exclusive; 0 = noisiest).

    ``window`` = [first, end) fixes it (negative indices count from the end). With
    ``progressive_start`` = k (B²-DiffuRL) only the last k steps are trained at first, and the
    window grows back linearly to all steps over ``progressive_iterations`` collects (B² grows
    its 14 of 20 steps to 20 over 100 stages: ``k + floor(i * (T - k + 1) / I)``).
    """
    first, end = 0, num_steps
    if window is not None:
        first, end = (int(w) + num_steps if int(w) < 0 else int(w) for w in window)
    if progressive_start is not None:
        span = end - first
        start = int(progressive_start)
        first = end - min(span, start + (iteration * (span - start + 1)) // max(1, progressive_iterations))
    return first, end


@dataclass
class WindowConfig:
    window: Optional[List[int]] = None  # [first, end) step indices (negative: from the end); None = all steps
    progressive_start: Optional[int] = None  # B²-DiffuRL: train the last k steps of the window first
    progressive_iterations: int = 100  # collects over which the progressive window grows back to the whole window

    def __post_init__(self) -> None:
        if self.window is not None and len(self.window) != 2:
            raise ConfigError(f"window must be [first, end), got {self.window}")
        if self.progressive_start is not None and self.progressive_start < 1:
            raise ConfigError(f"progressive_start must be >= 1, got {self.progressive_start}")
        if self.progressive_iterations < 1:
            raise ConfigError(f"progressive_iterations must be >= 1, got {self.progressive_iterations}")


@STEP_SELECTORS.register("window", config=WindowConfig)
def window_steps(mask: torch.Tensor, iteration: int, generator: Optional[torch.Generator], cfg: WindowConfig) -> torch.Tensor:
    """Keep the steps of one window of step indices: a fixed [first, end) (DDPO-style trainers
    leave the near-deterministic last steps out), or B²-DiffuRL's backward progressive window
    (Hu et al. 2025, "Towards Better Alignment: Training Diffusion Models with Reinforcement
    Learning Against Sparse Rewards", B²-DiffuRL): the last ``progressive_start`` steps first, growing back to the whole
    window over ``progressive_iterations`` collects. Draws no random numbers."""
    first, end = trained_window(mask.shape[1], iteration, cfg.window, cfg.progressive_start, cfg.progressive_iterations)
    inside = torch.zeros_like(mask)
    inside[:, first:end] = 1.0
    return mask * inside


@dataclass
class TimestepFractionConfig:
    fraction: float = 1.0  # share of each row's selectable steps trained on (DDPO timestep_fraction; 1 = all)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must lie in (0, 1], got {self.fraction}")


@STEP_SELECTORS.register("timestep_fraction", config=TimestepFractionConfig)
def timestep_fraction(mask: torch.Tensor, iteration: int, generator: Optional[torch.Generator],
                      cfg: TimestepFractionConfig) -> torch.Tensor:
    """DDPO's random timestep subset (Black et al. 2023, "Training Diffusion Models with
    Reinforcement Learning", ``timestep_fraction``): each row trains a random
    ``round(m * fraction)`` (at least 1) of its m selectable steps. Every row must offer the
    same m; one ``torch.rand(n, m)`` is drawn, and only when the subset is smaller than m."""
    n = mask.shape[0]
    counts = mask.sum(1)
    m = int(counts[0]) if n else 0
    if bool((counts != m).any()):
        raise ValueError("step selector timestep_fraction needs every row to offer the same number of steps")
    k = max(1, int(round(m * cfg.fraction)))
    if k >= m:
        return mask
    order = torch.argsort(torch.rand(n, m, generator=generator), dim=1)
    columns = mask.nonzero()[:, 1].view(n, m)  # each row's selectable steps, ascending
    return torch.zeros_like(mask).scatter_(1, columns, (order < k).to(mask.dtype))
