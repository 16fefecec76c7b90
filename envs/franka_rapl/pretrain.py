"""Supervised pre-training of the frame encoder's backbone for ``workbench bench rapl-franka``.

RAPL starts from a *pre-trained* vision encoder (an ImageNet ResNet-18, frozen, plus a small
trained head) and spends the preference budget on the head alone. No pre-trained weights can be
fetched here, so this module makes a stand-in: the backbone (e.g. the tiny CNN) learns, on a
separate unlabeled pool of scripted Franka Push episodes (no preferences, never the held-out
test pool), to regress the privileged scene quantities of single frames from the simulator
(:data:`QUANTITIES`: cube, goal and zone centre xy, TCP xyz). That is "a representation
pre-trained on lots of robot data" with simulator labels in place of web-scale images.

:func:`pretrain_backbone` trains ``encoder.backbone`` plus a throw-away regression head and
reports the fit per quantity on held-out episodes of the pre-training pool
(:class:`PretrainResult`); the bench then loads the backbone's state into every RAPL and RLHF
encoder and freezes it (``trainable_stages=0``). :func:`save_backbone` / :func:`load_backbone`
keep that state in a safetensors file, so later runs can reuse the exact same backbone.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

__all__ = ["QUANTITIES", "frame_labels", "PretrainResult", "pretrain_backbone", "save_backbone", "load_backbone",
           "state_digest"]

# what a frame is regressed onto, all in metres in the world frame (x forward, y left, z up)
QUANTITIES = ("cube_x", "cube_y", "goal_x", "goal_y", "zone_x", "zone_y", "tcp_x", "tcp_y", "tcp_z")


def frame_labels(infos: Sequence[Mapping[str, Any]], zone: Any, frames: int, frame_every: int) -> np.ndarray:
    """Per-frame targets ``[frames, len(QUANTITIES)]`` (float32, metres) of one episode.

    ``infos``: the episode's ``steps + 1`` FrankaPush info dicts (reset first); frame ``k`` was
    rendered at step ``k * frame_every``, so its labels come from ``infos[k * frame_every]``.
    ``zone``: the forbidden-zone centre ``(2,)`` (fixed for the episode, not in the infos).
    """
    if zone is None:
        raise ValueError("frame_labels needs the episode's zone centre (Episode.zone; forbidden zone on)")
    if (frames - 1) * frame_every >= len(infos):
        raise ValueError(f"{frames} frames every {frame_every} steps need {(frames - 1) * frame_every + 1} infos, "
                         f"got {len(infos)}")
    zone = np.asarray(zone, dtype=np.float64)[:2]
    rows = []
    for k in range(frames):
        info = infos[k * frame_every]
        cube, goal, tcp = (np.asarray(info[key], dtype=np.float64) for key in ("object_pos", "goal_pos", "ee_pos"))
        rows.append(np.concatenate([cube[:2], goal[:2], zone, tcp[:3]]))
    return np.asarray(rows, dtype=np.float32)


@dataclass
class PretrainResult:
    """What :func:`pretrain_backbone` returns.

    ``state``: the trained backbone's state dict (CPU tensors), the weights RAPL and RLHF start
    from. ``fit``: per quantity of :data:`QUANTITIES`, on the held-out episodes, ``r2``
    (1 - SSE / SST, SST about the held-out mean; 1 is perfect, 0 is predicting the mean; NaN
    if the held-out values barely vary, e.g. one held-out episode) and
    ``rmse_cm`` (centimetres), plus ``std_cm`` (the quantity's held-out spread, what an RMSE
    compares to). ``mean_r2``: the mean of the ``r2``. ``curve``: per epoch (0 = before
    training) ``loss`` (train MSE on standardised targets) and ``val_loss``. ``frames`` /
    ``val_frames``: frames trained / held out; ``seconds``: wall time of the training.
    """

    state: Dict[str, Any]
    fit: Dict[str, Dict[str, float]]
    mean_r2: float
    curve: List[Dict[str, float]] = field(default_factory=list)
    frames: int = 0
    val_frames: int = 0
    seconds: float = 0.0

    def summary(self) -> Dict[str, Any]:
        """JSON-ready figures (everything but the weights)."""
        return {"fit": self.fit, "mean_r2": self.mean_r2, "curve": self.curve, "frames": self.frames,
                "val_frames": self.val_frames, "seconds": self.seconds}


MIN_STD = 1e-4  # m: a held-out quantity spread less than this has no meaningful R^2 (NaN)


def _r2_rmse(pred: np.ndarray, true: np.ndarray):
    """Per column ``(r2, rmse, std)`` of ``pred`` vs ``true``, both ``[N, Q]`` (metres); ``r2``
    is NaN where the column's std is under :data:`MIN_STD`."""
    err, spread = pred - true, true.std(0)
    sse = (err ** 2).sum(0)
    sst = ((true - true.mean(0)) ** 2).sum(0)
    r2 = np.where(spread > MIN_STD, 1.0 - sse / np.maximum(sst, 1e-12), np.nan)
    return r2, np.sqrt((err ** 2).mean(0)), spread


def pretrain_backbone(encoder, videos: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, epochs: int = 10,
                      batch_size: int = 64, lr: float = 1e-3, val_frac: float = 0.1, hidden: int = 256,
                      seed: int = 0, names: Sequence[str] = QUANTITIES) -> PretrainResult:
    """Train ``encoder.backbone`` in place to regress per-frame scene quantities; return its state and fit.

    ``encoder``: a :class:`~workbench.rewards.rapl.FrameEncoder` whose backbone is trainable
    (its ``preprocess`` resizes and normalises the frames exactly as preference training will;
    its projection head is not used). ``videos``: episodes as uint8 ``[F_k, H, W, 3]``;
    ``labels``: their targets ``[F_k, Q]`` (e.g. :func:`frame_labels`, metres), ``names`` the Q
    quantities' names (the keys of the fit). The last
    ``round(val_frac * episodes)`` episodes (at least one) are held out, whole, so the fit is
    measured on unseen layouts. Targets are standardised with the training frames' mean and
    std; the loss is their MSE through a regression head ``Linear(feat, hidden) - ReLU -
    Linear(hidden, Q)`` (``hidden=0``: one linear layer), trained with the backbone by Adam at
    ``lr`` on shuffled batches of ``batch_size`` frames for ``epochs`` epochs. ``seed`` fixes
    the head's initial weights and the batch order (the backbone's are the encoder's).
    The backbone ends at its last epoch, in eval mode, with its parameters' ``requires_grad``
    as they were (a frozen encoder is trained here all the same); the head is discarded.
    """
    import torch
    from torch import nn

    if len(videos) != len(labels) or len(videos) < 2:
        raise ValueError(f"need >= 2 episodes with one label array each, got {len(videos)} videos, {len(labels)} labels")
    if epochs < 1 or batch_size < 1 or not lr > 0 or not 0 < val_frac < 1:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0, 0 < val_frac < 1; "
                         f"got {epochs}, {batch_size}, {lr}, {val_frac}")
    for v, y in zip(videos, labels):
        if len(v) != len(y) or np.ndim(y) != 2 or np.shape(y)[1] != len(names):
            raise ValueError(f"a video of {len(v)} frames needs labels [{len(v)}, {len(names)}], got {list(np.shape(y))}")
    n_val = min(len(videos) - 1, max(1, int(round(val_frac * len(videos)))))
    cut = len(videos) - n_val
    x_tr, x_va = np.concatenate(videos[:cut]), np.concatenate(videos[cut:])
    y_tr, y_va = np.concatenate(labels[:cut]).astype(np.float32), np.concatenate(labels[cut:]).astype(np.float32)
    mean, std = y_tr.mean(0), np.maximum(y_tr.std(0), 1e-6)  # a constant quantity (std 0) stays finite
    backbone = encoder.backbone
    was_trainable = [p.requires_grad for p in backbone.parameters()]
    for p in backbone.parameters():
        p.requires_grad_(True)
    torch.manual_seed(seed)
    feat, q = int(backbone.num_features), y_tr.shape[1]
    head = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(), nn.Linear(hidden, q)) if hidden else nn.Linear(feat, q)
    head = head.to(encoder.device)
    opt = torch.optim.Adam(list(backbone.parameters()) + list(head.parameters()), lr=lr)
    mean_t, std_t = (torch.as_tensor(a, device=encoder.device) for a in (mean, std))
    rng = np.random.default_rng(seed)

    def forward(frames: np.ndarray) -> torch.Tensor:
        """Standardised predictions ``[N, Q]`` of uint8 frames ``[N, H, W, 3]``."""
        return head(backbone(encoder.preprocess(frames)))

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        """Predictions in metres ``[N, Q]``, eval mode, in chunks."""
        backbone.eval()
        head.eval()
        out = [forward(x[i:i + 256]) * std_t + mean_t for i in range(0, len(x), 256)]
        return torch.cat(out).cpu().numpy()

    def mse(x: np.ndarray, y: np.ndarray) -> float:
        return float((((predict(x) - y) / std) ** 2).mean())

    start = time.perf_counter()
    curve = [{"epoch": 0, "loss": mse(x_tr, y_tr), "val_loss": mse(x_va, y_va)}]
    for epoch in range(1, epochs + 1):
        backbone.train()
        head.train()
        order = rng.permutation(len(x_tr))
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = np.sort(order[i:i + batch_size])
            target = (torch.as_tensor(y_tr[idx], device=encoder.device) - mean_t) / std_t
            loss = ((forward(x_tr[idx]) - target) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        curve.append({"epoch": epoch, "loss": total / len(order), "val_loss": mse(x_va, y_va)})
    seconds = time.perf_counter() - start
    for p, flag in zip(backbone.parameters(), was_trainable):
        p.requires_grad_(flag)  # the encoder's own freezing, as it was
    backbone.eval()
    r2, rmse, spread = _r2_rmse(predict(x_va), y_va)
    fit = {name: {"r2": float(r2[j]), "rmse_cm": 100 * float(rmse[j]), "std_cm": 100 * float(spread[j])}
           for j, name in enumerate(names)}
    finite = [v for v in r2 if math.isfinite(v)]
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    return PretrainResult(state, fit, float(np.mean(finite)) if finite else math.nan, curve, len(x_tr), len(x_va),
                          seconds)


def state_digest(state: Mapping[str, Any]) -> str:
    """A short SHA-256 hex digest (16 chars) of a state dict's names and values: two runs that
    report the same digest started from bit-identical backbones."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def save_backbone(state: Mapping[str, Any], path: str, meta: Mapping[str, Any]) -> None:
    """Write a backbone state dict to a safetensors file; ``meta`` (JSON-able: how it was made,
    the fit) goes in its metadata under ``"pretrain"``."""
    import json

    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, path,
              metadata={"format": "workbench.rapl_pretrained_backbone.v1", "pretrain": json.dumps(meta)})


def load_backbone(path: str):
    """(state dict, meta) of a file written by :func:`save_backbone`; load the state with
    ``encoder.backbone.load_state_dict(state)``."""
    import json

    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("pretrain", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}
    return state, meta
