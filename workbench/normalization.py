"""Running mean/variance (Welford/Chan parallel update), as in gymnasium's NormalizeObservation."""
from __future__ import annotations

import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Tracks mean and variance of a stream of [B, *shape] samples; state lives in buffers
    so it is saved with the policy and restored exactly on resume."""

    def __init__(self, shape: tuple, epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        batch_mean = x.mean(dim=0)
        batch_var = x.var(dim=0, unbiased=False)
        n = x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor, clip: float | None = None, epsilon: float = 1e-8) -> torch.Tensor:
        out = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + epsilon)
        return out.clamp(-clip, clip) if clip else out
