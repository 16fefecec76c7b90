"""Entropic optimal transport between the frames of two videos (POT's batched Sinkhorn).

RAPL scores a video against a reference by matching their frame embeddings: the cost
``C[i, j] = 1 - cos(z_a[i], z_b[j])`` (in [0, 2]), uniform marginals ``1/T_a`` and ``1/T_b``,
the entropic plan ``P = argmin <P, C> - reg * H(P)`` and the similarity ``s = -<P, C>``
(in [-2, 0]; 0 means every frame is matched to an identical-looking frame). Everything here
takes numpy arrays (inference) or torch tensors; on tensors POT's torch backend runs the
Sinkhorn iterations as ordinary torch ops, so gradients flow back to the embeddings.

Per-frame reward: ``r_i = -T_a * sum_j P[i, j] C[i, j]``. Row ``i`` of the plan carries mass
``1/T_a``, so ``r_i`` is minus the plan-weighted mean cost of frame ``i`` (in [-2, 0]) and does
not shrink with the episode length; the rewards of a video sum to ``T_a * s``, which is the
score a reward reports (the return of the episode under these per-step rewards).

With uniform marginals and no temporal term, OT compares *sets* of frames: a video played
backwards matches its forward version perfectly. Progress a reward should see has to show in
the frames themselves (where the object is), not only in their order.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

__all__ = ["DEFAULT_REG", "cosine_cost", "transport_plan", "ot_similarity", "ot_similarities", "ot_frame_rewards"]

DEFAULT_REG = 0.1  # entropic weight; RAPL's code uses 1 (gamma = 1), which blurs the plan a lot


def _check_pair(za: Any, zb: Any) -> None:
    for name, z in (("z_a", za), ("z_b", zb)):
        if z.ndim != 2 or z.shape[0] == 0:
            raise ValueError(f"{name} must be frame embeddings [T, D] with T >= 1, got shape {list(z.shape)}")
    if za.shape[1] != zb.shape[1]:
        raise ValueError(f"embedding sizes differ: z_a is [.., {za.shape[1]}], z_b is [.., {zb.shape[1]}]")


def cosine_cost(za: Any, zb: Any, eps: float = 1e-8) -> Any:
    """Cosine distance ``1 - cos`` between every frame of A and every frame of B.

    ``za``: ``[T_a, D]``, ``zb``: ``[T_b, D]`` (both numpy or both torch) -> ``[T_a, T_b]`` in
    [0, 2], of the same kind; differentiable on tensors.
    """
    _check_pair(za, zb)
    if isinstance(za, torch.Tensor):
        a = za / za.norm(dim=1, keepdim=True).clamp_min(eps)
        b = zb / zb.norm(dim=1, keepdim=True).clamp_min(eps)
        return (1.0 - a @ b.T).clamp(0.0, 2.0)
    za, zb = np.asarray(za, dtype=np.float64), np.asarray(zb, dtype=np.float64)
    a = za / np.maximum(np.linalg.norm(za, axis=1, keepdims=True), eps)
    b = zb / np.maximum(np.linalg.norm(zb, axis=1, keepdims=True), eps)
    return np.clip(1.0 - a @ b.T, 0.0, 2.0)


def transport_plan(cost: Any, reg: float = DEFAULT_REG, num_iter: int = 500, stop_thr: float = 1e-6,
                   grad: str = "autodiff") -> Any:
    """Entropic OT plan for a cost ``[T_a, T_b]`` (or a batch ``[B, T_a, T_b]``), uniform marginals.

    Log-domain Sinkhorn from POT's batched solver (``ot.solve_batch(method="log_sinkhorn")``:
    stable for small ``reg``, one set of iterations for the whole batch). Rows sum to ``1/T_a``
    and columns to ``1/T_b`` up to ``stop_thr`` (or after ``num_iter`` iterations); each plan
    sums to 1. Numpy in, numpy out. On tensors ``grad="autodiff"`` backpropagates through every
    iteration, ``"last_step"`` through the last one only (less memory), ``"detach"`` not at all.
    """
    import ot

    if not reg > 0:
        raise ValueError(f"reg (the entropic weight) must be > 0, got {reg}")
    if cost.ndim not in (2, 3) or min(cost.shape) == 0:
        raise ValueError(f"cost must be [T_a, T_b] or [B, T_a, T_b] with all sizes >= 1, got shape {list(cost.shape)}")
    if grad not in ("autodiff", "last_step", "detach"):
        raise ValueError(f"grad must be autodiff, last_step or detach, got {grad!r}")
    if not isinstance(cost, torch.Tensor):
        cost = np.asarray(cost, dtype=np.float64)
    batch = cost if cost.ndim == 3 else cost[None]
    res = ot.solve_batch(batch, reg=float(reg), max_iter=int(num_iter), tol=float(stop_thr),
                         method="log_sinkhorn", grad=grad)
    return res.plan if cost.ndim == 3 else res.plan[0]


def ot_similarity(za: Any, zb: Any, reg: float = DEFAULT_REG, return_plan: bool = False) -> Any:
    """OT similarity ``s(A, B) = -sum(P * C)`` in [-2, 0] of two videos' frame embeddings.

    ``za``: ``[T_a, D]``, ``zb``: ``[T_b, D]``. Returns a float (numpy inputs) or a 0-d tensor
    with gradients (torch inputs); with ``return_plan`` also ``(P, C)``, both ``[T_a, T_b]``.
    """
    cost = cosine_cost(za, zb)
    plan = transport_plan(cost, reg)
    s = -(plan * cost).sum()
    s = s if isinstance(s, torch.Tensor) else float(s)
    return (s, plan, cost) if return_plan else s


def ot_similarities(pairs: Sequence[Tuple[torch.Tensor, torch.Tensor]], reg: float = DEFAULT_REG,
                    grad: str = "autodiff") -> torch.Tensor:
    """OT similarities ``[N]`` of N embedding pairs ``(z_a [T_a, D], z_b [T_b, D])`` (tensors), the
    pairs of equal shape solved as one Sinkhorn batch; differentiable, for training."""
    if not pairs:
        raise ValueError("ot_similarities needs at least one pair")
    groups: Dict[Tuple[int, int], List[int]] = {}
    for k, (za, zb) in enumerate(pairs):
        _check_pair(za, zb)
        groups.setdefault((za.shape[0], zb.shape[0]), []).append(k)
    out: List[Any] = [None] * len(pairs)
    for idx in groups.values():
        cost = torch.stack([cosine_cost(*pairs[k]) for k in idx])
        sims = -(transport_plan(cost, reg, grad=grad) * cost).sum((1, 2))
        for k, s in zip(idx, sims):
            out[k] = s
    return torch.stack(out)


def ot_frame_rewards(za: Any, zb: Any, reg: float = DEFAULT_REG) -> Tuple[Any, Any]:
    """Per-frame rewards of video A against reference B and the similarity they come from.

    Returns ``(r, s)``: ``r[i] = -T_a * sum_j P[i, j] C[i, j]``, shape ``[T_a]``, each in
    [-2, 0] (minus the mean cosine distance of frame ``i`` to the reference frames it is
    transported to), and ``s = ot_similarity(za, zb)``; ``r.sum() == T_a * s``.
    """
    cost = cosine_cost(za, zb)
    plan = transport_plan(cost, reg)
    r = -(plan * cost).sum(1) * cost.shape[0]
    s = -(plan * cost).sum()
    return r, (s if isinstance(s, torch.Tensor) else float(s))
