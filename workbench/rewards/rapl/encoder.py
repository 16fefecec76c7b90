"""Frame encoder for video rewards: a timm backbone (or a tiny CNN) and a projection head.

RAPL (Tian et al., ICLR 2024 / arXiv 2412.04835) embeds every frame of a video with a
pre-trained vision encoder plus a small projection (ResNet-18 -> ``Linear(512, 32)`` in the
authors' code) and fine-tunes that encoder on human preferences. :class:`FrameEncoder` is
that encoder: any timm model by name (``pretrained=False`` by default, or weights from a local
file), optionally frozen or trainable only in its last stages, followed by an MLP head to
``embed_dim``. ``backbone="cnn"`` builds a three-layer CNN for fast CPU experiments. Both
backbones, their weights and their normalisation come from :mod:`workbench.vision`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.vision import TinyCNN, channel_stats, data_config, stage_groups, timm_backbone

__all__ = ["FrameEncoder", "TinyCNN", "video_to_tensor"]


def video_to_tensor(video: Any) -> torch.Tensor:
    """A video as a float tensor ``[T, 3, H, W]`` in [0, 1], so every encoder reads one layout.

    Accepts a numpy array ``[T, H, W, 3]`` (uint8 0..255, or float in [0, 1]) as cameras and
    renderers give it, or a torch tensor ``[T, 3, H, W]`` (uint8, or float in [0, 1]) as a
    batched pipeline gives it. Anything else raises ``ValueError`` naming the shape.
    """
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"a numpy video must have shape [T, H, W, 3], got {list(video.shape)}")
        x = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)
    elif isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"a torch video must have shape [T, 3, H, W], got {list(video.shape)}")
        x = video
    else:
        raise ValueError(f"a video must be a numpy array [T, H, W, 3] or a tensor [T, 3, H, W], got {type(video).__name__}")
    if x.shape[0] == 0:
        raise ValueError("a video needs at least one frame, got T=0")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"video frames must be uint8 or float in [0, 1], got dtype {x.dtype}")
    return x.float()


class FrameEncoder(nn.Module):
    """Per-frame embedding ``phi``: video ``[T, ...]`` -> ``[T, embed_dim]``.

    ``backbone``: a timm model name (built with ``num_classes=0``, i.e. pooled features) or
    ``"cnn"`` (:class:`TinyCNN`). ``pretrained``: let timm fetch its weights; ``weights``: a
    local state-dict file for the backbone instead. ``trainable_stages``: ``None`` trains the
    whole backbone, ``0`` freezes it (RAPL's Franka runs train only the head), ``N`` trains the
    last N parameter groups of timm's coarse ``group_matcher`` (ResNet: stem, layer1..4; ViT:
    patch embedding, blocks; ``"cnn"``: its conv stages). ``head_hidden``: width of the head's
    hidden layer, 0 for a single linear layer (RAPL's). ``image_size``: frames are resized to it
    (default: the timm data config's input size; 64 for ``"cnn"``) and normalised with the data
    config's mean and std (RAPL's code used 112 px and no mean/std normalisation).
    ``bn_eval``: keep BatchNorm layers on their running statistics while training, since a batch
    is the frames of a few videos. ``chunk_size``: frames per backbone call (bounds memory).
    ``config`` holds the arguments to rebuild the module (without ``pretrained``/``weights``:
    a checkpoint carries the weights itself).
    """

    def __init__(self, backbone: str = "cnn", embed_dim: int = 32, head_hidden: int = 256,
                 pretrained: bool = False, weights: Optional[str] = None, trainable_stages: Optional[int] = None,
                 image_size: Optional[int] = None, bn_eval: bool = True, cnn_channels: Sequence[int] = (16, 32, 32),
                 chunk_size: int = 256) -> None:
        super().__init__()
        if embed_dim < 1 or head_hidden < 0 or chunk_size < 1:
            raise ValueError(f"need embed_dim >= 1, head_hidden >= 0, chunk_size >= 1; "
                             f"got {embed_dim}, {head_hidden}, {chunk_size}")
        self.config: Dict[str, Any] = dict(
            backbone=backbone, embed_dim=int(embed_dim), head_hidden=int(head_hidden), image_size=image_size,
            trainable_stages=trainable_stages, bn_eval=bool(bn_eval), cnn_channels=list(cnn_channels),
            chunk_size=int(chunk_size))
        if backbone == "cnn":
            if pretrained or weights:
                raise ValueError("backbone 'cnn' has no pretrained weights; use a timm model name")
            self.backbone = TinyCNN(cnn_channels)
            mean, std, size = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 64
        else:
            self.backbone = timm_backbone(backbone, "backbone", pretrained=pretrained, weights=weights)
            mean, std, size = data_config(self.backbone)[:3]
        self.image_size = int(image_size or size)
        self.register_buffer("mean", channel_stats(mean, 3), persistent=False)
        self.register_buffer("std", channel_stats(std, 3), persistent=False)
        feat = int(self.backbone.num_features)
        if head_hidden:
            self.head = nn.Sequential(nn.Linear(feat, head_hidden), nn.ReLU(), nn.Linear(head_hidden, embed_dim))
        else:
            self.head = nn.Linear(feat, embed_dim)
        self.embed_dim = int(embed_dim)
        self._frozen = self._freeze(trainable_stages)
        self.train()

    def _freeze(self, trainable_stages: Optional[int]) -> Tuple[nn.Module, ...]:
        """Turn off gradients outside the last ``trainable_stages`` groups; returns the fully
        frozen top-level modules (kept in eval mode)."""
        if trainable_stages is None:
            return ()
        if trainable_stages < 0:
            raise ValueError(f"trainable_stages must be None or >= 0, got {trainable_stages}")
        groups = stage_groups(self.backbone)
        train = set(sum(groups[max(0, len(groups) - trainable_stages):], [])) if trainable_stages else set()
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name in train)
        return (self.backbone,) if not train else ()

    def train(self, mode: bool = True) -> "FrameEncoder":
        """Train mode, except that a frozen backbone and (with ``bn_eval``) BatchNorm layers stay
        in eval mode, so an embedding never depends on which frames share its batch."""
        super().train(mode)
        for m in self._frozen:
            m.eval()
        if self.config["bn_eval"]:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, video: Any) -> torch.Tensor:
        """Video (see :func:`video_to_tensor`) -> normalised ``[T, 3, S, S]`` on the encoder's device."""
        x = video_to_tensor(video).to(self.device)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std

    def _embed_frames(self, x: torch.Tensor) -> torch.Tensor:
        n = self.config["chunk_size"]
        return torch.cat([self.head(self.backbone(x[i:i + n])) for i in range(0, x.shape[0], n)])

    def forward(self, video: Any) -> torch.Tensor:
        """Frame embeddings ``[T, embed_dim]`` (float32, not unit-normalised) of one video,
        computed in chunks of ``chunk_size`` frames; differentiable."""
        return self._embed_frames(self.preprocess(video))

    def encode_many(self, videos: Sequence[Any]) -> List[torch.Tensor]:
        """Embeddings ``[T_k, embed_dim]`` of several videos from one batched forward pass
        (their frames are concatenated), so training steps do not pay one call per video."""
        xs = [self.preprocess(v) for v in videos]
        if not xs:
            return []
        z = self._embed_frames(torch.cat(xs))
        return list(torch.split(z, [x.shape[0] for x in xs]))

    @torch.no_grad()
    def embed(self, video: Any) -> np.ndarray:
        """Frame embeddings ``[T, embed_dim]`` as a numpy array, in eval mode and without
        gradients (what a reward computes after a rollout)."""
        was = self.training
        self.eval()
        try:
            return self(video).float().cpu().numpy()
        finally:
            self.train(was)
