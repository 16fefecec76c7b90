"""Image backbones shared by policies and rewards: timm models, local weights, normalisation, tiny CNNs.

The visuomotor policy, RAPL's frame encoder and the aesthetic scorer all need the same four
things, so they live here once, with one error path (a :class:`ConfigError` naming the option
and the file):

* :func:`timm_backbone`: any timm model by name, built without its classifier (pooled features
  ``[B, F]``), never downloading unless asked, optionally from a local weights file;
* :func:`read_state_dict` / :func:`load_backbone_weights`: local weights read safely
  (safetensors, or a torch file with ``weights_only=True``: no pickled code runs), a 3-channel
  first conv adapted to stacked frames;
* :func:`data_config` / :func:`channel_stats`: the mean, std, input size and interpolation the
  backbone expects (timm's data config), as ``[1, C, 1, 1]`` tensors;
* :func:`conv_stack` and :class:`TinyCNN`: small CNNs for CPU work, whose layers and init order
  are fixed (seeded runs depend on them).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from workbench.registry import ConfigError

__all__ = ["CONV_STACKS", "conv_stack", "TinyCNN", "read_state_dict", "timm_backbone", "load_backbone_weights",
           "DataConfig", "data_config", "channel_stats", "stage_groups"]

# (out channels, kernel, stride) of each conv layer, each followed by a ReLU
CONV_STACKS = {
    "nature": [(32, 8, 4), (64, 4, 2), (64, 3, 1)],  # Mnih et al. 2015 (Nature DQN), for 64-84 px
    "drq": [(32, 3, 2), (32, 3, 1), (32, 3, 1), (32, 3, 1)],  # Yarats et al. 2021 (DrQ / DrQ-v2)
}


def conv_stack(kind: str, in_channels: int, ortho: bool) -> nn.Sequential:
    """[B, in_channels, H, W] float -> [B, F] flattened conv features (``kind``: a CONV_STACKS
    key; ``ortho``: orthogonal init with gain sqrt 2 and zero biases, as PPO implementations use)."""
    layers: List[nn.Module] = []
    for out, kernel, stride in CONV_STACKS[kind]:
        conv = nn.Conv2d(in_channels, out, kernel, stride)
        if ortho:
            nn.init.orthogonal_(conv.weight, math.sqrt(2))
            nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU()]
        in_channels = out
    return nn.Sequential(*layers, nn.Flatten())


class TinyCNN(nn.Module):
    """Three strided conv layers and a 4x4 average pool, flattened: ``[N, 3, H, W] -> [N, 16 * c]``.

    The flattened 4x4 grid keeps *where* things are in the frame (a global average pool would
    throw that away), which is what task-progress rewards need. GroupNorm, not BatchNorm, so a
    frame's features never depend on the other frames of its batch.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 32)) -> None:
        super().__init__()
        c_in, stages = 3, []
        for c in channels:
            stages.append(nn.Sequential(nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(1, c), nn.ReLU()))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.num_features = c_in * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.pool(x)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_state_dict(path: str, option: str) -> Dict[str, torch.Tensor]:
    """The tensors of a local weights file: ``.safetensors``, or any other file through
    ``torch.load(weights_only=True)``. A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper
    and a leading ``module.`` (DataParallel) are removed. ``option`` names the config key the
    path came from in every error."""
    if not Path(path).is_file():
        raise ConfigError(f"{option}: no file at {path}")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader error is a bad file
        raise ConfigError(f"{option}: could not load {path} (safetensors or a weights-only torch state dict): "
                          f"{_first_line(e)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{option}: {path} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def timm_backbone(name: str, option: str, *, in_channels: int = 3, pretrained: bool = False,
                  weights: Optional[str] = None, weights_option: str = "weights", seed: Optional[int] = None,
                  create_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A timm model without its classifier: ``[B, in_channels, H, W] -> [B, num_features]``.

    ``pretrained``: let timm fetch its weights (needs network access); ``weights``: a local file
    instead (see :func:`load_backbone_weights`). ``seed``: build under this torch seed without
    touching the caller's random stream (the same random backbone on every build).
    ``create_kwargs``: more ``timm.create_model`` arguments (e.g. ``img_size``). ``option`` / ``weights_option`` are the
    config keys that name the model and the file, for the errors."""
    import timm

    if ":" not in name and not timm.is_model(name):  # hf-hub:/local-dir: sources are timm's to resolve
        similar = timm.list_models(f"*{name.split('.')[0][:8]}*")[:8]
        raise ConfigError(f"{option}: unknown timm model {name!r}" + (f"; similar: {', '.join(similar)}" if similar else ""))
    try:
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            backbone = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_channels,
                                         **(create_kwargs or {}))
    except Exception as e:  # noqa: BLE001 - timm raises many types (bad kwargs, no network for pretrained)
        hint = f"; give local weights with {weights_option}=<file>" if pretrained else ""
        raise ConfigError(f"{option}: timm could not build {name!r}: {_first_line(e)}{hint}") from None
    if weights:
        load_backbone_weights(backbone, weights, weights_option, in_channels, name)
    return backbone


def load_backbone_weights(backbone: nn.Module, path: str, option: str, in_channels: int = 3,
                          name: Optional[str] = None) -> None:
    """Load a local weights file (:func:`read_state_dict`) into a timm backbone built without
    its classifier. The classifier's weights in the file are dropped; a first conv saved for
    3 channels is adapted to ``in_channels`` (stacked frames) as timm does for pretrained
    weights. Any other missing or extra key means the file is for another model: an error
    naming ``option``, the file and the model (``name``, else timm's architecture)."""
    state = read_state_dict(path, option)
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") or ()
    heads = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))  # distilled ViTs: two
    state = {k: v for k, v in state.items() if not (heads and k.startswith(heads))}
    first = f"{cfg.get('first_conv', '')}.weight"
    if first in state and state[first].ndim == 4 and state[first].shape[1] != in_channels:
        from timm.models import adapt_input_conv

        state[first] = adapt_input_conv(in_channels, state[first])
    model = f"timm:{name or cfg.get('architecture') or type(backbone).__name__}"
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"{option}: {path} does not fit {model}: {lines[-1] if lines else type(e).__name__}") from None
    if missing:
        raise ConfigError(f"{option}: {path} does not fit {model}: it lacks {len(missing)} weights, "
                          f"e.g. {', '.join(missing[:3])}")
    if unexpected:
        raise ConfigError(f"{option}: {path} does not fit {model}: {len(unexpected)} weights the model does not have, "
                          f"e.g. {', '.join(unexpected[:3])}")


class DataConfig(NamedTuple):
    """What a backbone expects of its input images (timm's data config)."""

    mean: Tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: Tuple[float, ...]
    size: int  # side of the square input it was trained on
    interpolation: str  # resize filter: bicubic | bilinear | ...


def data_config(backbone: nn.Module) -> DataConfig:
    """The mean, std, input size and interpolation of a timm backbone (ImageNet's mean/std and
    224 px when its pretrained config names none)."""
    import timm

    data = timm.data.resolve_model_data_config(backbone)
    return DataConfig(tuple(data["mean"]), tuple(data["std"]), int(data["input_size"][-1]),
                      str(data.get("interpolation") or "bicubic"))


def channel_stats(values: Sequence[float], channels: int) -> torch.Tensor:
    """Per-channel statistics as a float32 ``[1, channels, 1, 1]`` tensor, cycled when the input
    has more channels than the statistics (k stacked RGB frames: mean repeated k times)."""
    stats = torch.tensor(tuple(values), dtype=torch.float32)
    return stats.repeat(math.ceil(channels / len(stats)))[:channels].view(1, -1, 1, 1)


def stage_groups(backbone: nn.Module) -> List[List[str]]:
    """The backbone's parameter names in coarse stages, input side first: a :class:`TinyCNN`'s
    conv stages, or timm's ``group_matcher(coarse=True)`` groups (ResNet: stem, layer1..4;
    ViT: patch embedding, blocks). What "train only the last N stages" counts."""
    if isinstance(backbone, TinyCNN):
        return [[n for n, _ in stage.named_parameters(prefix=f"stages.{i}")] for i, stage in enumerate(backbone.stages)]
    from timm.models import group_parameters

    return list(group_parameters(backbone, backbone.group_matcher(coarse=True)).values())
