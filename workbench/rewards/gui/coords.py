"""Coordinates of GUI grounding outputs: what a model's numbers mean, mapped to and from the
pixels of the original screenshot, and the box geometry the rewards share.

A *convention* names the frame a model writes its coordinates in:

- ``abs``: pixels of the original image.
- ``abs_resized``: pixels of the image as the processor resized it for the vision encoder,
  ``smart_resize(H, W, factor=28, min_pixels, max_pixels)`` of qwen-vl-utils. Qwen2.5-VL
  answers in this frame, so a reward must be given the ``min_pixels``/``max_pixels`` of the
  processor that fed the model (defaults: qwen-vl-utils' and Qwen2.5-VL's preprocessor
  config, 4·28² and 16384·28²).
- ``norm1000``: 0..1000 of the image's width and height (Qwen2-VL, Qwen3-VL).
- ``norm1``: 0..1 of the width and height.

Each map is one positive scale per axis, applied in float arithmetic with no rounding to
integers, so :func:`to_original` and :func:`from_original` are exact inverses: a round trip
returns its input up to float rounding (about 1e-12 px), also where ``smart_resize`` changes
the aspect ratio (1366x768 -> 1372x756). Boxes are ``(x1, y1, x2, y2)``, points ``(x, y)``.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

__all__ = ["CONVENTIONS", "QWEN_FACTOR", "QWEN_MIN_PIXELS", "QWEN_MAX_PIXELS", "smart_resize", "check_coord_options",
           "model_frame", "to_original", "from_original", "box_center", "point_in_box", "box_iou", "is_ordered",
           "point_box"]

CONVENTIONS = ("abs", "abs_resized", "norm1000", "norm1")
QWEN_FACTOR = 28  # Qwen2/2.5-VL: 14 px patches merged 2x2
QWEN_MIN_PIXELS = 4 * 28 * 28  # qwen-vl-utils IMAGE_MIN_TOKEN_NUM * factor**2 = 3,136
QWEN_MAX_PIXELS = 16384 * 28 * 28  # qwen-vl-utils IMAGE_MAX_TOKEN_NUM * factor**2 = 12,845,056
MAX_ASPECT_RATIO = 200  # qwen-vl-utils refuses longer/shorter side ratios above this

Coords = Tuple[float, ...]


def smart_resize(height: int, width: int, factor: int = QWEN_FACTOR, min_pixels: int = QWEN_MIN_PIXELS,
                 max_pixels: int = QWEN_MAX_PIXELS) -> Tuple[int, int]:
    """(height, width) the Qwen-VL processor resizes an image to: each side a multiple of
    ``factor``, the area within [min_pixels, max_pixels], the aspect ratio kept as closely as
    possible. The same arithmetic as qwen-vl-utils ``smart_resize`` (kept here so a reward needs
    no torch import; a test checks the two agree)."""
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got "
                         f"{max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar <= 0 or w_bar <= 0:
        raise ValueError(f"smart_resize of {width}x{height} with max_pixels={max_pixels} leaves a side of 0 px")
    return h_bar, w_bar


def check_coord_options(convention: str, min_pixels: int, max_pixels: int) -> None:
    """Refuse an unknown convention or a pixel range smart_resize cannot use (ValueError, one
    line; :func:`workbench.rewards.base.build_reward` turns it into a ConfigError)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"coord_convention={convention!r} is not valid; valid choices: {', '.join(CONVENTIONS)}")
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")


def _size(image_size: Sequence[float]) -> Tuple[float, float]:
    if len(image_size) != 2 or not all(math.isfinite(float(v)) and float(v) > 0 for v in image_size):
        raise ValueError(f"image_size must be [W, H] with positive sides, got {list(image_size)}")
    return float(image_size[0]), float(image_size[1])


def model_frame(convention: str, image_size: Sequence[float], min_pixels: int = QWEN_MIN_PIXELS,
                max_pixels: int = QWEN_MAX_PIXELS, factor: int = QWEN_FACTOR) -> Tuple[float, float]:
    """(width, height) that the model's coordinates span for an original image of
    ``image_size`` = [W, H] pixels."""
    width, height = _size(image_size)
    if convention == "abs":
        return width, height
    if convention == "abs_resized":
        h_bar, w_bar = smart_resize(int(height), int(width), factor, min_pixels, max_pixels)
        return float(w_bar), float(h_bar)
    if convention == "norm1000":
        return 1000.0, 1000.0
    if convention == "norm1":
        return 1.0, 1.0
    raise ValueError(f"coord_convention={convention!r} is not valid; valid choices: {', '.join(CONVENTIONS)}")


def _rescale(values: Sequence[float], sx: Tuple[float, float], sy: Tuple[float, float]) -> Coords:
    """Every x multiplied by sx[0] / sx[1], every y by sy[0] / sy[1]."""
    if len(values) not in (2, 4):
        raise ValueError(f"a point has 2 numbers and a box 4, got {len(values)}: {list(values)}")
    return tuple(float(v) * s[0] / s[1] for v, s in zip(values, (sx, sy) * 2))


def to_original(values: Sequence[float], convention: str, image_size: Sequence[float],
                min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS,
                factor: int = QWEN_FACTOR) -> Coords:
    """A point ``(x, y)`` or box ``(x1, y1, x2, y2)`` written in ``convention`` for an image
    of ``image_size`` = [W, H], in original-image pixels (floats)."""
    width, height = _size(image_size)
    if convention == "abs":  # identity, not v * W / W (which may round)
        return _rescale(values, (1.0, 1.0), (1.0, 1.0))
    fw, fh = model_frame(convention, image_size, min_pixels, max_pixels, factor)
    return _rescale(values, (width, fw), (height, fh))


def from_original(values: Sequence[float], convention: str, image_size: Sequence[float],
                  min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS,
                  factor: int = QWEN_FACTOR) -> Coords:
    """The inverse of :func:`to_original`: original pixels -> the model's ``convention``
    (floats; round them yourself when writing integer SFT targets)."""
    width, height = _size(image_size)
    if convention == "abs":
        return _rescale(values, (1.0, 1.0), (1.0, 1.0))
    fw, fh = model_frame(convention, image_size, min_pixels, max_pixels, factor)
    return _rescale(values, (fw, width), (fh, height))


def box_center(coords: Sequence[float]) -> Tuple[float, float]:
    """The point itself, or a box's centre."""
    if len(coords) == 2:
        return float(coords[0]), float(coords[1])
    return (coords[0] + coords[2]) / 2.0, (coords[1] + coords[3]) / 2.0


def point_in_box(point: Sequence[float], box: Sequence[float], strict: bool = False) -> bool:
    """Whether the point lies in the box: edges included (ScreenSpot's evaluation, UI-R1,
    GUI-G1) or, with ``strict``, excluded (GUI-R1, BTL-UI)."""
    x, y = point
    x1, y1, x2, y2 = box
    if strict:
        return x1 < x < x2 and y1 < y < y2
    return x1 <= x <= x2 and y1 <= y <= y2


def is_ordered(box: Sequence[float]) -> bool:
    """Whether a box's corners are in order (x1 <= x2, y1 <= y2); a zero-width box is ordered."""
    return box[0] <= box[2] and box[1] <= box[3]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ordered boxes (continuous areas); 0 when the union is 0."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def point_box(coords: Sequence[float], point_expand: float) -> Coords:
    """A box unchanged, or a point as the box of side ``point_expand`` centred on it (GUI-RC:
    ``POINT_EXPAND_SIZE`` = 50, i.e. ±25 px)."""
    if len(coords) == 4:
        return tuple(float(v) for v in coords)
    half = point_expand / 2.0
    return coords[0] - half, coords[1] - half, coords[0] + half, coords[1] + half

