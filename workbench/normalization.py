"""Running mean/variance (Chan et al. parallel update), as in gymnasium's NormalizeObservation.

Kept in numpy on the host: observations arrive from the simulator as numpy arrays, and
updating a few float64 vectors there costs microseconds where torch ops on tiny tensors cost
tens of them per control step.
"""
from __future__ import annotations

from typing import Dict

import numpy as np


class RunningMeanStd:
    def __init__(self, shape: tuple, epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)

    def update(self, x: np.ndarray) -> None:
        """Fold in a [B, *shape] batch of samples."""
        n = x.shape[0]
        if n == 1:  # the common single-env case: skip numpy's general reductions
            batch_mean, batch_var = x[0], 0.0
        else:
            batch_mean, batch_var = x.mean(axis=0), x.var(axis=0)
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def normalize(self, x: np.ndarray, clip: float | None = None, epsilon: float = 1e-8) -> np.ndarray:
        out = (x - self.mean) / np.sqrt(self.var + epsilon)
        return np.clip(out, -clip, clip) if clip else out

    def state_dict(self) -> Dict[str, np.ndarray]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": np.array(self.count)}

    def load_state_dict(self, state: Dict[str, np.ndarray]) -> None:
        self.mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self.var = np.asarray(state["var"], dtype=np.float64).copy()
        self.count = float(np.asarray(state["count"]))
