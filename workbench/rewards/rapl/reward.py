"""Learned video rewards: RAPL's OT reward, the RLHF baseline, checkpoints and evaluation.

:class:`RAPLReward` scores a robot video by optimal-transport feature matching, in the aligned
embedding, against the closest of a few preferred demonstration videos. :class:`RLHFRewardModel`
is the paper's baseline: the same encoder plus a linear per-frame reward head, trained on
pairs. Both give ``frame_rewards(video) -> [T]`` (computed once per finished rollout, then put
on the steps by an env adapter) and ``score(video)`` = their sum, and both save to and load from
one safetensors file (weights, demo embeddings, optionally demo videos, and a JSON config in its
metadata; no pickle).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from workbench.registry import ConfigError
from workbench.rewards.rapl.encoder import FrameEncoder, video_to_tensor
from workbench.rewards.rapl.preferences import PreferenceOracle, Rollout
from workbench.rewards.rapl.transport import DEFAULT_REG, cosine_cost, transport_plan

__all__ = ["RAPLReward", "RLHFRewardModel", "VideoRewardFn", "load_reward", "spearman_with_oracle"]

FORMAT = "workbench.video_reward.v1"


def _canonical(video: Any) -> torch.Tensor:
    """A demo video stored as a contiguous CPU tensor ``[T, 3, H, W]`` (uint8 kept as uint8), so
    its embedding is the same before saving and after loading."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        video_to_tensor(video)  # validates the shape
        return torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).contiguous()
    if isinstance(video, torch.Tensor) and video.dtype == torch.uint8:
        video_to_tensor(video)
        return video.detach().cpu().contiguous()
    return video_to_tensor(video).detach().cpu().contiguous()


def _save(path: str, kind: str, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(data, tmp, metadata={"format": FORMAT, "kind": kind, "config": json.dumps(meta)})
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def _read(path: Any, kind: Optional[str] = None) -> Tuple[str, Dict[str, Any], Dict[str, torch.Tensor]]:
    """(kind, config, tensors) of a checkpoint; ``ConfigError`` naming the path when it is
    missing, not ours, or of another kind."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"video reward checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise ConfigError(f"cannot read video reward checkpoint {path}: {e}") from e
    if header.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a video reward checkpoint (format {header.get('format')!r}, want {FORMAT})")
    if kind is not None and header.get("kind") != kind:
        raise ConfigError(f"{path} holds a '{header.get('kind')}' reward, not '{kind}'")
    return header["kind"], json.loads(header["config"]), tensors


def _encoder_from(config: Dict[str, Any], tensors: Dict[str, torch.Tensor], prefix: str) -> FrameEncoder:
    enc = FrameEncoder(**config)
    enc.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return enc


class RAPLReward:
    """RAPL's reward: OT feature matching against the closest preferred demonstration.

    ``encoder``: the aligned :class:`FrameEncoder`. ``demos``: preferred demonstration videos
    (RAPL's RL code uses 6), embedded here once; or, instead, ``demo_embeddings`` (``[T_k, D]``
    arrays, what a checkpoint without videos holds). ``reg``: Sinkhorn's entropic weight. Call
    :meth:`refresh` after changing the encoder.
    """

    kind = "rapl"

    def __init__(self, encoder: FrameEncoder, demos: Optional[Sequence[Any]] = None, reg: float = DEFAULT_REG,
                 demo_embeddings: Optional[Sequence[Any]] = None) -> None:
        if not isinstance(encoder, FrameEncoder):
            raise TypeError(f"encoder must be a FrameEncoder, got {type(encoder).__name__}")
        if (demos is None) == (demo_embeddings is None):
            raise ValueError("RAPLReward needs exactly one of demos (videos) or demo_embeddings")
        if len(demos if demos is not None else demo_embeddings) == 0:
            raise ValueError("RAPLReward needs at least one preferred demonstration")
        if not reg > 0:
            raise ValueError(f"reg must be > 0, got {reg}")
        self.encoder, self.reg = encoder.eval(), float(reg)
        self.demos = None if demos is None else [_canonical(d) for d in demos]
        if demos is not None:
            self.refresh()
        else:
            self._demo_z = [np.asarray(z, dtype=np.float32) for z in demo_embeddings]
            for z in self._demo_z:
                if z.ndim != 2 or z.shape[1] != encoder.embed_dim:
                    raise ValueError(f"demo embeddings must be [T, {encoder.embed_dim}], got {list(z.shape)}")

    def refresh(self) -> None:
        """Re-embed the demonstration videos (``[T_k, D]`` each) with the current encoder."""
        if self.demos is None:
            raise ValueError("this RAPLReward holds demo embeddings only (saved without videos); cannot re-embed")
        self._demo_z = [self.encoder.embed(d) for d in self.demos]

    def similarities(self, video: Any) -> np.ndarray:
        """OT similarity of ``video`` to every demo, ``[num_demos]``, each in [-2, 0]."""
        return self._match(video)[1]

    def _match(self, video: Any):
        """(per-frame rewards ``[K, T]`` list, similarities ``[K]``) against the K demos; demos
        of equal length are solved as one Sinkhorn batch."""
        z = self.encoder.embed(video)
        costs = [cosine_cost(z, d) for d in self._demo_z]
        if len({c.shape for c in costs}) == 1:
            plans = list(transport_plan(np.stack(costs), self.reg))
        else:
            plans = [transport_plan(c, self.reg) for c in costs]
        rewards = [-(p * c).sum(1) * z.shape[0] for p, c in zip(plans, costs)]
        return rewards, np.array([-(p * c).sum() for p, c in zip(plans, costs)])

    def frame_rewards(self, video: Any) -> np.ndarray:
        """Per-frame rewards ``[T]`` (float64, each in [-2, 0]: minus the mean cosine distance of
        the frame to the demo frames it is transported to, as in ``ot_frame_rewards``) against
        the closest demonstration, the one with the highest OT similarity. They sum to :meth:`score`."""
        rewards, sims = self._match(video)
        return np.asarray(rewards[int(np.argmax(sims))], dtype=np.float64)

    def score(self, video: Any) -> float:
        """Return of the video under :meth:`frame_rewards`: ``T * max_k s(video, demo_k)``."""
        return float(self.frame_rewards(video).sum())

    def save(self, path: str, with_videos: bool = False) -> None:
        """Write encoder weights, demo embeddings and config to one safetensors file; with
        ``with_videos`` also the demo videos (needed to :meth:`refresh` after more training, but
        large: 6 demos of 45 frames at 224x224 are 81 MB)."""
        tensors = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        tensors.update({f"demo_z.{i}": torch.from_numpy(z) for i, z in enumerate(self._demo_z)})
        if with_videos:
            if self.demos is None:
                raise ValueError("this RAPLReward has no demo videos to save")
            tensors.update({f"demo.{i}": d for i, d in enumerate(self.demos)})
        _save(path, self.kind, tensors, {"encoder": self.encoder.config, "reg": self.reg,
                                         "num_demos": len(self._demo_z), "with_videos": bool(with_videos)})

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "RAPLReward":
        """Rebuild a saved reward on ``device`` (demo embeddings as saved, so scores match
        exactly); ``ConfigError`` naming the path if it is missing."""
        _, cfg, tensors = _read(path, cls.kind)
        enc = _encoder_from(cfg["encoder"], tensors, "encoder.").to(device)
        demo_z = [tensors[f"demo_z.{i}"].numpy() for i in range(cfg["num_demos"])]
        reward = cls(enc, reg=cfg["reg"], demo_embeddings=demo_z)
        if cfg.get("with_videos"):
            reward.demos = [tensors[f"demo.{i}"] for i in range(cfg["num_demos"])]
        return reward


class RLHFRewardModel(nn.Module):
    """The RLHF baseline: ``r_t = w . phi(o_t) + b`` per frame with the same :class:`FrameEncoder`
    architecture, trained end to end on preference pairs (see ``train_rlhf``)."""

    kind = "rlhf_video"

    def __init__(self, encoder: FrameEncoder) -> None:
        super().__init__()
        if not isinstance(encoder, FrameEncoder):
            raise TypeError(f"encoder must be a FrameEncoder, got {type(encoder).__name__}")
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, 1)

    def forward(self, video: Any) -> torch.Tensor:
        """Per-frame rewards ``[T]`` of one video, differentiable."""
        return self.head(self.encoder(video)).squeeze(-1)

    def returns_many(self, videos: Sequence[Any]) -> torch.Tensor:
        """Summed per-frame rewards ``[K]`` of several videos from one batched forward pass."""
        return torch.stack([self.head(z).sum() for z in self.encoder.encode_many(videos)])

    @torch.no_grad()
    def frame_rewards(self, video: Any) -> np.ndarray:
        """Per-frame rewards ``[T]`` (float64, unbounded: the model's units) in eval mode."""
        was = self.training
        self.eval()
        try:
            return self(video).double().cpu().numpy()
        finally:
            self.train(was)

    def score(self, video: Any) -> float:
        """The video's predicted return: the sum of :meth:`frame_rewards`."""
        return float(self.frame_rewards(video).sum())

    def save(self, path: str) -> None:
        """Write weights and encoder config to one safetensors file."""
        _save(path, self.kind, dict(self.state_dict()), {"encoder": self.encoder.config})

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "RLHFRewardModel":
        """Rebuild a saved model on ``device`` in eval mode; ``ConfigError`` if the path is missing."""
        _, cfg, tensors = _read(path, cls.kind)
        model = cls(FrameEncoder(**cfg["encoder"]))
        model.load_state_dict(tensors)
        return model.to(device).eval()


class VideoRewardFn:
    """The reward-library face of a video reward: ``fn(completions, videos=None, **columns)``
    returns one score per video (the videos are the completions, or the ``videos`` column when
    given). ``frame_rewards`` / ``score`` reach the wrapped ``model``."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.frame_rewards = model.frame_rewards
        self.score = model.score

    def __call__(self, completions: Sequence[Any], videos: Optional[Sequence[Any]] = None, **_: Any) -> List[float]:
        return [self.model.score(v) for v in (completions if videos is None else videos)]


def load_reward(path: str, device: str = "cpu"):
    """A :class:`RAPLReward` or :class:`RLHFRewardModel`, whichever the checkpoint holds."""
    kind = _read(path)[0]
    return {RAPLReward.kind: RAPLReward, RLHFRewardModel.kind: RLHFRewardModel}[kind].load(path, device)


def spearman_with_oracle(reward: Any, rollouts: Sequence[Rollout], oracle: PreferenceOracle) -> float:
    """Spearman rank correlation between ``reward.score(video)`` and the oracle's return over
    held-out rollouts (RAPL v2's Table 1 metric), in [-1, 1]; NaN if either is constant."""
    from scipy.stats import spearmanr

    if len(rollouts) < 3:
        raise ValueError(f"a rank correlation needs at least 3 rollouts, got {len(rollouts)}")
    learned = [reward.score(r.video) for r in rollouts]
    truth = [oracle.returns(r) for r in rollouts]
    if np.ptp(learned) == 0 or np.ptp(truth) == 0:
        return math.nan
    return float(spearmanr(learned, truth).statistic)
