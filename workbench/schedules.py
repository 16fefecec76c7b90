"""Learning-rate schedules: multipliers of ``algo.lr`` as a function of training progress in [0, 1)."""
from __future__ import annotations

import math

from workbench.registry import LR_SCHEDULES


@LR_SCHEDULES.register("constant")
def constant(progress: float) -> float:
    return 1.0


@LR_SCHEDULES.register("linear")
def linear(progress: float) -> float:
    """Linear decay to 0 at the end of training (CleanRL's ``anneal_lr``)."""
    return 1.0 - progress


@LR_SCHEDULES.register("cosine")
def cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))
