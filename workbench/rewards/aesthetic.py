"""Aesthetic score: a small learned head over L2-normalised image embeddings.

The LAION aesthetic predictor v2 (used as the reward in DDPO and Flow-GRPO) embeds an image
with CLIP ViT-L/14, divides the embedding by its L2 norm and maps it through a stack of
linear layers, 768 -> 1024 -> 128 -> 64 -> 16 -> 1 (Dropout in between, no nonlinearity),
to a score of about 1-10. :func:`aesthetic_score` is that recipe with the parts swappable:

* ``encoder``: ``clip:<local path or hub id>`` (transformers ``CLIPVisionModelWithProjection``,
  its ``image_embeds``) or ``timm:<model name>`` (a timm backbone built with
  ``pretrained=False`` and no classifier, its pooled features; weights from
  ``encoder_weights``, else a fixed-seed random init, useful only for tests).
* ``head_weights``: the head. Files ending in ``.safetensors`` are read with safetensors, any
  other file with ``torch.load(weights_only=True)`` (no pickled code). The state dict may name
  the linear layers ``linears.<i>.weight/bias`` (what :func:`save_head` writes), use LAION's
  ``layers.<i>.weight/bias`` with any other module (Dropout, activations) between them, be a
  plain ``nn.Sequential`` (``<i>.weight``) or, for a one-layer head, an ``nn.Linear``
  (``weight``, ``bias``); a leading ``module.`` and a ``{"state_dict": ...}`` wrapper are
  accepted. The layers are taken in the order of their index.

Images are resized (shortest side to ``image_size``, then centre-cropped to a square) and
normalised with the encoder's mean/std (timm data config, CLIP image processor). The model
loads on the first call (or :meth:`AestheticScorer.load`), once per reward, and runs under
``torch.no_grad``.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from workbench.registry import REWARDS, ConfigError
from workbench.rewards.image import _images, to_pil

__all__ = ["aesthetic_score", "AestheticScorer", "save_head", "load_head", "preprocess", "LAION_HIDDEN_SIZES"]

logger = logging.getLogger(__name__)

LAION_HIDDEN_SIZES = (1024, 128, 64, 16)
_ACTIVATIONS = ("none", "relu", "gelu")
_LAYER_KEY = re.compile(r"^(?:(?P<prefix>.*)\.)?(?P<index>\d+)\.(?P<kind>weight|bias)$")


def load_head(path: str, hidden_sizes: Sequence[int] = LAION_HIDDEN_SIZES) -> List[Tuple[Any, Any]]:
    """The linear layers of a head file as ``[(weight [out, in], bias [out]), ...]`` float32
    tensors, checked against ``hidden_sizes`` (the last layer must have 1 output).

    Raises :class:`ConfigError` naming ``head_weights`` and ``path`` when the file is missing,
    unreadable, not in a known layout, or its layer sizes are not ``hidden_sizes + [1]``."""
    import torch

    from workbench.vision import read_state_dict

    state = read_state_dict(path, "head_weights")
    if set(state) in ({"weight"}, {"weight", "bias"}):
        groups = {0: {k: v for k, v in state.items()}}
    else:
        groups, prefixes = {}, set()
        for key, value in state.items():
            m = _LAYER_KEY.match(key)
            if not m:
                raise ConfigError(f"head_weights: unexpected key '{key}' in {path}; expected "
                                  "linears.<i>.weight/bias or LAION's layers.<i>.weight/bias")
            prefixes.add(m["prefix"])
            groups.setdefault(int(m["index"]), {})[m["kind"]] = value
        if len(prefixes) > 1:
            raise ConfigError(f"head_weights: {path} mixes key prefixes {sorted(map(str, prefixes))}; save one head per file")
    layers = []
    for index in sorted(groups):
        w, b = groups[index].get("weight"), groups[index].get("bias")
        if w is None or w.ndim != 2 or (b is not None and tuple(b.shape) != (w.shape[0],)):
            raise ConfigError(f"head_weights: layer {index} in {path} is not a linear layer (weight [out, in], bias [out])")
        layers.append((w.float(), torch.zeros(w.shape[0]) if b is None else b.float()))
    found = [int(layers[0][0].shape[1])] + [int(w.shape[0]) for w, _ in layers]
    if any(layers[i][0].shape[0] != layers[i + 1][0].shape[1] for i in range(len(layers) - 1)):
        raise ConfigError(f"head_weights: the layers in {path} do not chain (sizes {found})")
    if found[1:] != list(hidden_sizes) + [1]:
        raise ConfigError(
            f"head_weights: {path} has layer sizes {' -> '.join(map(str, found))} but hidden_sizes is "
            f"{list(hidden_sizes)} (expected {found[0]} -> {' -> '.join(map(str, list(hidden_sizes) + [1]))})"
        )
    return layers


def save_head(path: str, layers: Any) -> None:
    """Save a head as safetensors with keys ``linears.<i>.weight/bias``, loadable by
    :func:`aesthetic_score`. ``layers``: an ``nn.Module`` (its ``nn.Linear`` layers in
    order, e.g. a trained ``nn.Sequential``) or a list of ``(weight [out, in], bias [out])``
    pairs (arrays or tensors; bias may be None)."""
    import torch
    from safetensors.torch import save_file

    if isinstance(layers, torch.nn.Module):
        layers = [(m.weight, m.bias) for m in layers.modules() if isinstance(m, torch.nn.Linear)]
    state = {}
    for i, (w, b) in enumerate(layers):
        w = torch.as_tensor(np.asarray(w.detach().cpu() if hasattr(w, "detach") else w), dtype=torch.float32)
        state[f"linears.{i}.weight"] = w.contiguous()
        if b is not None:
            b = torch.as_tensor(np.asarray(b.detach().cpu() if hasattr(b, "detach") else b), dtype=torch.float32)
            state[f"linears.{i}.bias"] = b.reshape(-1).contiguous()
    if not state:
        raise ValueError("save_head: no linear layers given")
    save_file(state, path)


def preprocess(images: Sequence[Any], size: int, mean: Sequence[float], std: Sequence[float],
               interpolation: str = "bicubic"):
    """A float32 tensor ``[N, 3, size, size]``: each image (PIL, or an array as
    :func:`workbench.rewards.image.to_pil` takes) resized so its shortest side is ``size``,
    centre-cropped, scaled to [0, 1] and normalised per channel with ``mean`` / ``std``."""
    import torch
    from PIL import Image

    from workbench.vision import channel_stats

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}.get(str(interpolation), Image.BICUBIC)
    out = []
    for image in images:
        img = to_pil(image)
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), resample=resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        out.append(np.asarray(img, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (x - channel_stats(mean, 3)) / channel_stats(std, 3)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _timm_encoder(name: str, weights: Optional[str]):
    """(model, forward, mean, std, size, interpolation) of a timm backbone without classifier;
    without weights, the same seed-0 random backbone on every build."""
    from workbench.vision import data_config, timm_backbone

    model = timm_backbone(name, "encoder", weights=weights, weights_option="encoder_weights", seed=0)
    if weights is None:
        logger.warning("aesthetic_score: encoder timm:%s has random weights (no encoder_weights given)", name)
    return (model, model, *data_config(model))


def _clip_encoder(source: str):
    """(model, forward, mean, std, size, interpolation) of a CLIP vision tower with projection."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    try:
        model = CLIPVisionModelWithProjection.from_pretrained(source)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"encoder: could not load 'clip:{source}' as CLIPVisionModelWithProjection: {_first_line(e)}") from None
    mean, std, size = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, int(model.config.image_size)
    try:
        proc = CLIPImageProcessor.from_pretrained(source)
        mean, std = proc.image_mean, proc.image_std
        size = int((proc.crop_size or {}).get("height", size))
    except Exception:  # noqa: BLE001 - no preprocessor_config.json: OpenAI CLIP's defaults
        pass
    native = int(model.config.image_size)

    def forward(x):
        return model(pixel_values=x, interpolate_pos_encoding=x.shape[-1] != native).image_embeds

    return model, forward, mean, std, size, "bicubic"


class AestheticScorer:
    """The ``aesthetic_score`` reward: ``scorer(completions, images=None) -> list[float]``,
    one head output per image (see :func:`aesthetic_score`)."""

    def __init__(self, head_weights: str, encoder: str, encoder_weights: Optional[str], hidden_sizes: Sequence[int],
                 activation: str, device: str, batch_size: int, image_size: Optional[int]) -> None:
        self.encoder, self.encoder_weights = encoder, encoder_weights
        self.activation, self.device, self.batch_size, self.image_size = activation, device, batch_size, image_size
        self.head = load_head(head_weights, hidden_sizes)  # checked now: fails at build time
        self.head_weights = head_weights
        self._model = None
        self._error: Optional[ConfigError] = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the encoder (once) and check that it gives embeddings of the head's input size;
        raises :class:`ConfigError` otherwise, and again on every later call."""
        import torch

        with self._lock:
            if self._error is not None:
                raise self._error
            if self._model is not None:
                return
            try:
                kind, _, source = self.encoder.partition(":")
                build = _timm_encoder(source, self.encoder_weights) if kind == "timm" else _clip_encoder(source)
                model, forward, mean, std, size, interp = build
                size = int(self.image_size or size)
                model.eval().to(self.device)
                try:
                    with torch.no_grad():
                        probe = forward(torch.zeros(1, 3, size, size, device=self.device))
                except Exception as e:  # noqa: BLE001
                    raise ConfigError(f"encoder: {self.encoder} fails on {size}x{size} images (image_size): "
                                      f"{_first_line(e)}") from None
                if probe.ndim != 2:
                    raise ConfigError(f"encoder: {self.encoder} gives outputs of shape {list(probe.shape)}, "
                                      "not [N, dim] embeddings")
                dim, head_in = int(probe.shape[1]), int(self.head[0][0].shape[1])
                if dim != head_in:
                    raise ConfigError(f"head_weights: {self.head_weights} takes {head_in}-dim embeddings but "
                                      f"encoder {self.encoder} gives {dim}-dim ones")
            except ConfigError as e:
                self._error = e
                raise
            self.head = [(w.to(self.device), b.to(self.device)) for w, b in self.head]
            self._forward, self._norm = forward, (mean, std, size, interp)
            self._model = model

    def embed(self, images: Sequence[Any]):
        """L2-normalised embeddings, a float32 tensor ``[len(images), dim]`` on ``device``."""
        import torch

        self.load()
        mean, std, size, interp = self._norm
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = preprocess(images[start:start + self.batch_size], size, mean, std, interp).to(self.device)
                chunks.append(self._forward(x).float())
        emb = torch.cat(chunks)
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def score_embeddings(self, embeddings: Any) -> List[float]:
        """The head applied to embeddings ``[N, dim]`` (normalised here, as the encoder's are):
        a float per row."""
        import torch

        with torch.no_grad():
            x = torch.as_tensor(embeddings, dtype=torch.float32, device=self.head[0][0].device)
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            for i, (w, b) in enumerate(self.head):
                x = x @ w.T + b
                if i < len(self.head) - 1 and self.activation != "none":
                    x = torch.relu(x) if self.activation == "relu" else torch.nn.functional.gelu(x)
            return x[:, 0].tolist()

    def __call__(self, completions: List[Any], images: Optional[List[Any]] = None, **_: Any) -> List[float]:
        """Scores of the images (the ``images`` column when given, else the completions)."""
        imgs = list(_images(completions, images))
        if not imgs:
            return []
        return self.score_embeddings(self.embed(imgs))


@REWARDS.register("aesthetic_score")
def aesthetic_score(head_weights: str, encoder: str = "clip:openai/clip-vit-large-patch14",
                    encoder_weights: Optional[str] = None, hidden_sizes: Sequence[int] = LAION_HIDDEN_SIZES,
                    activation: str = "none", device: str = "cpu", batch_size: int = 32,
                    image_size: Optional[int] = None) -> AestheticScorer:
    """Aesthetic-predictor score per image: ``head(embedding / |embedding|)``, a float (about
    1-10 for the LAION v2 head on CLIP ViT-L/14; any scale for other heads).

    ``head_weights`` (required): the head file (formats in the module docstring).
    ``encoder``: ``clip:<path or hub id>`` or ``timm:<name>``; ``encoder_weights``: a local
    weights file for a timm encoder. ``hidden_sizes``: the head's hidden layer widths, LAION
    v2's ``[1024, 128, 64, 16]`` by default, ``[]`` for a linear head; ``activation``
    between hidden layers: ``none`` (LAION v2), ``relu`` or ``gelu``. ``image_size``: the side
    images are resized to (default: the encoder's). ``batch_size``: images per forward.
    """
    if not isinstance(encoder, str) or encoder.partition(":")[0] not in ("timm", "clip") or not encoder.partition(":")[2]:
        raise ConfigError(f"encoder must be 'timm:<model name>' or 'clip:<path or hub id>', got {encoder!r}")
    if encoder_weights is not None and not encoder.startswith("timm:"):
        raise ConfigError("encoder_weights is only for timm encoders; give a CLIP model as clip:<local path>")
    if encoder_weights is not None and not os.path.isfile(str(encoder_weights)):
        raise ConfigError(f"encoder_weights: no file at {encoder_weights}")
    try:
        hidden = [int(h) for h in hidden_sizes]
    except (TypeError, ValueError):
        raise ConfigError(f"hidden_sizes must be a list of positive ints, got {hidden_sizes!r}") from None
    if any(h < 1 for h in hidden):
        raise ConfigError(f"hidden_sizes must be a list of positive ints, got {hidden_sizes!r}")
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"activation={activation!r} is not valid; valid choices: {', '.join(_ACTIVATIONS)}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if image_size is not None and int(image_size) < 1:
        raise ConfigError(f"image_size must be >= 1, got {image_size}")
    try:
        import torch

        torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a torch device") from None
    return AestheticScorer(str(head_weights), encoder, None if encoder_weights is None else str(encoder_weights),
                           hidden, activation, str(device), int(batch_size),
                           None if image_size is None else int(image_size))
