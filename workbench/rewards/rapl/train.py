"""Preference training: RAPL's encoder alignment and the RLHF reward-model baseline.

Both fit a Bradley–Terry model with Adam. RAPL (:func:`train_alignment`) moves the *encoder*
so that OT similarities agree with ranked triplets: with anchor ``a``, the video that should be
closer to it ``p`` and the other one ``n``,
``P(p > n | a) = exp(s(a,p)/tau) / (exp(s(a,p)/tau) + exp(s(a,n)/tau))`` and the loss is
``-log P`` (a target of 1/2 for an equal triplet, as RAPL's equal-ranking term). Following the
authors' code the anchor is the most preferred video: the middle one must look closer to the
best than the worst does (``anchor="neutral"`` asks instead that the middle video be closer to
the best than to the worst). The RLHF baseline (:func:`train_rlhf`) learns a per-frame reward
whose sum ``R`` gives ``P(x > y) = sigmoid(R(x) - R(y))`` on the pairs of the same triplets.

:func:`train_rapl_reward` and :func:`train_rlhf_reward` are the whole pipeline from one budget
of ranked triplets to a reward a policy can train on (``RAPLReward.save`` /
``RLHFRewardModel.save`` write what the ``rapl`` / ``rlhf_video`` rewards load); they spend the
same answers and the same optimiser steps, so the two methods compare budget for budget.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.rewards.rapl.encoder import FrameEncoder
from workbench.rewards.rapl.preferences import Pair, Triplet, pairs_from_triplets
from workbench.rewards.rapl.reward import RAPLReward, RLHFRewardModel
from workbench.rewards.rapl.transport import DEFAULT_REG, ot_similarities

__all__ = ["triplet_logits", "triplet_accuracy", "train_alignment", "pair_logits", "pair_accuracy", "train_rlhf",
           "PAIRS_PER_TRIPLET", "epochs_for_updates", "train_rapl_reward", "train_rlhf_reward"]

ANCHORS = ("preferred", "neutral")


def _roles(t: Triplet, anchor: str):
    """(anchor, closer, farther) videos of a triplet."""
    if anchor == "preferred":
        return t.preferred, t.neutral, t.less_preferred
    if anchor == "neutral":
        return t.neutral, t.preferred, t.less_preferred
    raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")


def _unique(videos: Sequence[Any]):
    """(distinct videos, index of each input in that list), by identity."""
    index: Dict[int, int] = {}
    uniq = []
    for v in videos:
        if id(v) not in index:
            index[id(v)] = len(uniq)
            uniq.append(v)
    return uniq, [index[id(v)] for v in videos]


def triplet_logits(encoder: FrameEncoder, triplets: Sequence[Triplet], reg: float = DEFAULT_REG,
                   temperature: float = 1.0, anchor: str = "preferred") -> torch.Tensor:
    """Bradley–Terry logits ``(s(a,p) - s(a,n)) / temperature``, shape ``[B]``, differentiable
    w.r.t. the encoder; every distinct video of the batch is embedded once."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    roles = [_roles(t, anchor) for t in triplets]
    uniq, idx = _unique([v for r in roles for v in r])
    z = encoder.encode_many(uniq)
    pairs = []
    for k in range(len(roles)):
        za, zp, zn = (z[idx[3 * k + m]] for m in range(3))
        pairs += [(za, zp), (za, zn)]
    s = ot_similarities(pairs, reg)
    return (s[0::2] - s[1::2]) / temperature


def pair_logits(model: nn.Module, pairs: Sequence[Pair]) -> torch.Tensor:
    """Bradley–Terry logits ``R(first) - R(second)``, shape ``[B]``, for an RLHF reward model
    (``model.returns_many(videos) -> [K]`` summed per-frame rewards)."""
    uniq, idx = _unique([v for p in pairs for v in (p.first, p.second)])
    r = model.returns_many(uniq)
    return torch.stack([r[idx[2 * k]] - r[idx[2 * k + 1]] for k in range(len(pairs))])


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    strict = targets == 1.0
    return float((logits[strict] > 0).float().mean()) if strict.any() else math.nan


@torch.no_grad()
def _evaluate(module: nn.Module, items: Sequence, logits_fn: Callable, targets_fn: Callable, batch_size: int):
    was = module.training
    module.eval()
    try:
        logits = torch.cat([logits_fn(items[i:i + batch_size]) for i in range(0, len(items), batch_size)])
    finally:
        module.train(was)
    targets = targets_fn(items).to(logits.device)
    return float(F.binary_cross_entropy_with_logits(logits, targets)), _accuracy(logits, targets)


def triplet_accuracy(encoder: FrameEncoder, triplets: Sequence[Triplet], reg: float = DEFAULT_REG,
                     anchor: str = "preferred", batch_size: int = 16) -> float:
    """Fraction of non-equal triplets whose OT similarities order them as the oracle did
    (``s(a,p) > s(a,n)``); 0.5 is chance. NaN when all triplets are equal."""
    if not triplets:
        raise ValueError("triplet_accuracy needs at least one triplet")
    return _evaluate(encoder, triplets, lambda b: triplet_logits(encoder, b, reg, 1.0, anchor),
                     _triplet_targets, batch_size)[1]


def pair_accuracy(model: nn.Module, pairs: Sequence[Pair], batch_size: int = 32) -> float:
    """Fraction of non-tied pairs the RLHF model orders as the oracle did; 0.5 is chance."""
    if not pairs:
        raise ValueError("pair_accuracy needs at least one pair")
    return _evaluate(model, pairs, lambda b: pair_logits(model, b), _pair_targets, batch_size)[1]


def _triplet_targets(triplets: Sequence[Triplet]) -> torch.Tensor:
    return torch.tensor([0.5 if t.equal else 1.0 for t in triplets])


def _pair_targets(pairs: Sequence[Pair]) -> torch.Tensor:
    return torch.tensor([float(p.label) for p in pairs])


def _fit(module: nn.Module, items: Sequence, logits_fn: Callable, targets_fn: Callable, *, epochs: int,
         batch_size: int, lr: float, weight_decay: float, val_items: Optional[Sequence], keep_best: bool,
         seed: int) -> List[Dict[str, float]]:
    """Adam on the Bradley–Terry loss; one curve row per epoch (epoch 0 = before training)."""
    if not items:
        raise ValueError("training needs at least one preference label")
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    evaluate = lambda xs: _evaluate(module, xs, logits_fn, targets_fn, max(batch_size, 16))  # noqa: E731
    curve: List[Dict[str, float]] = []
    best, best_state = math.inf, None

    def record(epoch: int, loss: float, acc: float) -> None:
        nonlocal best, best_state
        row = {"epoch": epoch, "loss": loss, "accuracy": acc}
        if val_items:
            row["val_loss"], row["val_accuracy"] = evaluate(val_items)
            if keep_best and row["val_loss"] < best:
                best, best_state = row["val_loss"], copy.deepcopy(module.state_dict())
        curve.append(row)

    record(0, *evaluate(items))
    module.train()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(items))
        total, correct, counted, n = 0.0, 0.0, 0, 0
        for start in range(0, len(items), batch_size):
            batch = [items[i] for i in order[start:start + batch_size]]
            logits = logits_fn(batch)
            targets = targets_fn(batch).to(logits.device)
            loss = F.binary_cross_entropy_with_logits(logits, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
            n += len(batch)
            strict = targets == 1.0
            correct += float((logits.detach()[strict] > 0).sum())
            counted += int(strict.sum())
        record(epoch, total / n, correct / counted if counted else math.nan)
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return curve


def train_alignment(encoder: FrameEncoder, triplets: Sequence[Triplet], *, epochs: int = 20, batch_size: int = 10,
                    lr: float = 1e-3, weight_decay: float = 0.0, reg: float = DEFAULT_REG, temperature: float = 1.0,
                    anchor: str = "preferred", val_triplets: Optional[Sequence[Triplet]] = None,
                    keep_best: bool = True, seed: int = 0) -> List[Dict[str, float]]:
    """Fine-tune ``encoder`` in place (RAPL's representation alignment) on ranked triplets.

    Defaults follow the authors' Franka script: Adam at 1e-3, batches of 10 triplets. With
    ``val_triplets`` and ``keep_best`` the encoder ends at the epoch of lowest validation loss.
    Returns the training curve: per epoch (0 = before training) ``loss`` (mean negative
    log-likelihood, nats), ``accuracy`` (train triplets ordered right; at epoch 0 measured
    in eval mode) and, with validation data, ``val_loss`` and ``val_accuracy``.
    """
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
    return _fit(encoder, triplets, lambda b: triplet_logits(encoder, b, reg, temperature, anchor), _triplet_targets,
                epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, val_items=val_triplets,
                keep_best=keep_best, seed=seed)


def train_rlhf(model: nn.Module, pairs: Sequence[Pair], *, epochs: int = 20, batch_size: int = 16,
               lr: float = 1e-3, weight_decay: float = 0.0, val_pairs: Optional[Sequence[Pair]] = None,
               keep_best: bool = True, seed: int = 0) -> List[Dict[str, float]]:
    """Train an RLHF reward model (:class:`~workbench.rewards.rapl.reward.RLHFRewardModel`) in
    place with Bradley–Terry on summed per-frame rewards over preference pairs. Returns the
    same curve as :func:`train_alignment` (pairs instead of triplets)."""
    return _fit(model, pairs, lambda b: pair_logits(model, b), _pair_targets, epochs=epochs, batch_size=batch_size,
                lr=lr, weight_decay=weight_decay, val_items=val_pairs, keep_best=keep_best, seed=seed)


# RLHF answers the same queries: each ranked triplet implies three pairs, so batches of three
# times as many pairs keep the videos and optimiser steps per epoch equal to RAPL's
PAIRS_PER_TRIPLET = 3


def epochs_for_updates(train_triplets: int, batch_size: int, epochs: int, min_updates: int) -> int:
    """``epochs``, or more when that would give fewer than ``min_updates`` optimiser steps on
    ``train_triplets`` in batches of ``batch_size`` (a small budget is not starved)."""
    if train_triplets < 1 or batch_size < 1 or epochs < 0 or min_updates < 0:
        raise ValueError(f"need train_triplets >= 1, batch_size >= 1, epochs >= 0, min_updates >= 0; got "
                         f"{train_triplets}, {batch_size}, {epochs}, {min_updates}")
    return max(epochs, math.ceil(min_updates / math.ceil(train_triplets / batch_size)))


def train_rapl_reward(encoder: FrameEncoder, triplets: Sequence[Triplet], demos: Sequence[Any], *,
                      val_triplets: Optional[Sequence[Triplet]] = None, epochs: int = 20, batch_size: int = 10,
                      lr: float = 1e-3, reg: float = DEFAULT_REG, temperature: float = 1.0,
                      seed: int = 0) -> Tuple[RAPLReward, List[Dict[str, float]]]:
    """RAPL from preferences: align ``encoder`` in place on ``triplets`` (:func:`train_alignment`,
    keeping its best epoch on ``val_triplets``), then reward OT matching against ``demos``, the
    preferred demonstrations. Returns ``(reward, training curve)``."""
    curve = train_alignment(encoder, triplets, epochs=epochs, batch_size=batch_size, lr=lr, reg=reg,
                            temperature=temperature, val_triplets=val_triplets, seed=seed)
    return RAPLReward(encoder, demos, reg=reg), curve


def train_rlhf_reward(encoder: FrameEncoder, triplets: Sequence[Triplet], *,
                      val_triplets: Optional[Sequence[Triplet]] = None, epochs: int = 20, batch_size: int = 10,
                      lr: float = 1e-3, seed: int = 0) -> Tuple[RLHFRewardModel, List[Dict[str, float]]]:
    """The RLHF baseline from the same preferences: a per-frame reward head on ``encoder``
    (its initial weights drawn from torch's generator now), trained with :func:`train_rlhf` on
    the pairs the triplets imply, ``batch_size`` triplets' worth (:data:`PAIRS_PER_TRIPLET` x)
    per step. Returns ``(reward model, training curve)``."""
    model = RLHFRewardModel(encoder)
    val_pairs = pairs_from_triplets(val_triplets) if val_triplets else None
    curve = train_rlhf(model, pairs_from_triplets(triplets), epochs=epochs, lr=lr, val_pairs=val_pairs,
                       batch_size=PAIRS_PER_TRIPLET * batch_size, seed=seed)
    return model, curve
