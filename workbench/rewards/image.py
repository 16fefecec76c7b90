"""Image rewards: JPEG (in)compressibility (DDPO, Black et al. 2023; Flow-GRPO rescales it).

Image rewards follow the same TRL-style signature as text rewards,
``fn(completions, **columns)``: for an image generator the *completion* is the image, so the
diffusion env passes the generated images as ``completions`` (PIL images, or uint8 / float
arrays HWC or CHW). When the generated thing is text and the images are inputs (a VLM judge),
pass them in an ``images`` column instead: that column, when present, takes precedence.
"""
from __future__ import annotations

import io
from typing import Any, List, Optional, Sequence

import numpy as np

from workbench.registry import REWARDS

__all__ = ["to_pil", "jpeg_size_kb", "jpeg_compressibility", "jpeg_incompressibility"]


def to_pil(image: Any):
    """A PIL RGB image from a PIL image, a uint8 array or a float array in [0, 1] (HWC or CHW,
    numpy or torch)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "detach"):  # torch
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.transpose(arr, (1, 2, 0))  # CHW -> HWC
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def jpeg_size_kb(image: Any, quality: int = 95) -> float:
    """Size in kB (1000 bytes, as ddpo-pytorch) of the image saved as JPEG at ``quality``."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


def _images(completions: Sequence[Any], images: Optional[Sequence[Any]]) -> Sequence[Any]:
    return completions if images is None else images


def _jpeg_reward(sign: float, scale: float, quality: int, name: str):
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must lie in [1, 100], got {quality}")

    def reward(completions: List[Any], images: Optional[List[Any]] = None, **_: Any):
        kb = [jpeg_size_kb(x, quality) for x in _images(completions, images)]
        return {"score": [sign * scale * k for k in kb], "kb": kb}

    reward.__name__ = name
    return reward


@REWARDS.register("jpeg_compressibility")
def jpeg_compressibility(scale: float = 1.0, quality: int = 95):
    """``-scale * size_kB`` of the image as JPEG (quality 95): higher for images that compress
    better. DDPO uses scale 1; Flow-GRPO's ``-size_kB / 500`` is ``scale: 0.002``. The raw size
    is logged as the sub-score ``kb``."""
    return _jpeg_reward(-1.0, float(scale), int(quality), "jpeg_compressibility")


@REWARDS.register("jpeg_incompressibility")
def jpeg_incompressibility(scale: float = 1.0, quality: int = 95):
    """``+scale * size_kB`` of the image as JPEG (quality 95): higher for detailed images."""
    return _jpeg_reward(1.0, float(scale), int(quality), "jpeg_incompressibility")
