"""Preference data for video rewards: rollouts, a simulated human, triplets and pairs.

RAPL asks a person to rank three videos of the robot; a triplet is (``preferred``, ``neutral``,
``less_preferred``), best to worst. In the authors' simulations the person is simulated by a
privileged ground-truth return: three rollouts are sampled and sorted by it
(``preference_data_gen/generate_ranking.py``). :class:`PreferenceOracle` is that simulated
human; :func:`sample_triplets` spends a fixed query budget on a pool of rollouts, and
:func:`pairs_from_triplets` turns the same answers into the pairwise labels an RLHF reward
model trains on (each ranking of three gives three pairs, so both use the same budget).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Rollout", "Triplet", "Pair", "PreferenceOracle", "sample_triplets", "split_triplets",
           "pairs_from_triplets"]


@dataclass(frozen=True)
class Rollout:
    """One episode as the reward sees it: ``video`` (uint8 ``[T, H, W, 3]``, or a tensor
    ``[T, 3, H, W]``) and ``infos``, the per-step privileged info dicts only the oracle reads."""

    video: Any
    infos: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class Triplet:
    """A ranked query: ``preferred`` >= ``neutral`` >= ``less_preferred`` (videos), the oracle's
    ``returns`` in that order, and ``equal`` when the three were judged about equally good."""

    preferred: Any
    neutral: Any
    less_preferred: Any
    returns: Tuple[float, float, float] = (math.nan, math.nan, math.nan)
    equal: bool = False


@dataclass(frozen=True)
class Pair:
    """A pairwise label: ``label`` = P(``first`` is better than ``second``), 1.0 or 0.5 (a tie)."""

    first: Any
    second: Any
    label: float = 1.0


class PreferenceOracle:
    """Simulated human that ranks rollouts by a privileged return.

    ``score_fn(infos) -> float`` maps a rollout's per-step info dicts to its ground-truth
    return (higher is better). Three rollouts whose returns lie within ``equal_tol`` of each
    other are labelled an *equal* triplet (RAPL's "equal-ranking" data).
    """

    def __init__(self, score_fn: Callable[[Sequence[Mapping[str, Any]]], float], equal_tol: float = 0.0) -> None:
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
        if not equal_tol >= 0:
            raise ValueError(f"equal_tol must be >= 0, got {equal_tol}")
        self.score_fn = score_fn
        self.equal_tol = float(equal_tol)

    def returns(self, rollout: Rollout) -> float:
        """The ground-truth return of one rollout (a finite float)."""
        value = float(self.score_fn(rollout.infos))
        if not math.isfinite(value):
            raise ValueError(f"score_fn returned a non-finite return {value}")
        return value

    def rank(self, rollouts: Sequence[Rollout]) -> List[int]:
        """Indices of ``rollouts`` from best to worst (stable on ties)."""
        values = [self.returns(r) for r in rollouts]
        return sorted(range(len(values)), key=lambda i: -values[i])

    def label(self, a: Rollout, b: Rollout, c: Rollout) -> Triplet:
        """Answer one query: sort three rollouts into a :class:`Triplet`."""
        trio = (a, b, c)
        values = [self.returns(r) for r in trio]
        order = sorted(range(3), key=lambda i: -values[i])
        ranked = [trio[i] for i in order]
        rets = tuple(values[i] for i in order)
        return Triplet(ranked[0].video, ranked[1].video, ranked[2].video, rets, rets[0] - rets[2] <= self.equal_tol)


def sample_triplets(pool: Sequence[Rollout], oracle: PreferenceOracle, budget: int, seed: int = 0) -> List[Triplet]:
    """Spend ``budget`` queries on ``pool``: each draws three distinct rollouts uniformly at
    random and asks the oracle to rank them. Returns ``budget`` triplets (videos are shared with
    the pool, not copied)."""
    if len(pool) < 3:
        raise ValueError(f"need at least 3 rollouts in the pool to form a triplet, got {len(pool)}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(budget)):
        i, j, k = rng.choice(len(pool), size=3, replace=False)
        out.append(oracle.label(pool[i], pool[j], pool[k]))
    return out


def split_triplets(triplets: Sequence[Triplet],
                   val_frac: float) -> Tuple[Sequence[Triplet], Optional[Sequence[Triplet]]]:
    """(train, validation) of one preference budget: the last ``round(val_frac * B)`` triplets
    validate (the paper holds out 20%), so budgets drawn with the same seed stay nested. A budget
    under 5 triplets is too small to spare any: it trains on all of them, validation ``None``."""
    if not 0 <= val_frac < 1:
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    n_val = int(round(val_frac * len(triplets))) if len(triplets) >= 5 else 0
    return (triplets[:len(triplets) - n_val], triplets[len(triplets) - n_val:]) if n_val else (triplets, None)


def pairs_from_triplets(triplets: Sequence[Triplet]) -> List[Pair]:
    """The pairwise labels a ranking of three implies: preferred > neutral, preferred >
    less_preferred and neutral > less_preferred (label 0.5, a tie, for an equal triplet or equal returns)."""
    out = []
    for t in triplets:
        videos = (t.preferred, t.neutral, t.less_preferred)
        for i, j in ((0, 1), (0, 2), (1, 2)):
            tie = t.equal or t.returns[i] == t.returns[j]
            out.append(Pair(videos[i], videos[j], 0.5 if tie else 1.0))
    return out
