"""GUI grounding rewards, registered in :data:`workbench.registry.REWARDS`.

Every reward reads the completion's point or box (:mod:`.parse`), maps it from the model's
``coord_convention`` to original-image pixels (:mod:`.coords`; ``min_pixels``/``max_pixels``
only matter for ``abs_resized``) and scores it against per-sample columns of the GUI sample
contract:

- ``bbox``: target box ``[x1, y1, x2, y2]`` in original pixels (x1 < x2, y1 < y2);
- ``image_size``: ``[W, H]`` of the original image;
- ``action`` (``gui_action_type``; "click" when absent), ``rate`` (``gui_g1``'s difficulty
  weight; 1 when absent), ``group_id`` (``gui_region_consistency``: equal ids = rollouts of
  the same screenshot and instruction).

A completion with no point or box, or with a box whose corners are out of order, scores 0 and
is counted: every reward returns ``{"score": ..., "unparsed": 1.0 or 0.0, ...}``, so the mean
``reward/<name>/unparsed`` is the fraction of unparseable outputs in a batch.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from workbench.registry import REWARDS
from workbench.rewards.base import completion_text
from workbench.rewards.gui.coords import (QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, box_center, box_iou, check_coord_options,
                                          is_ordered, point_in_box, to_original)
from workbench.rewards.gui.parse import fenced_json, parse_action, parse_prediction
from workbench.rewards.gui.vote import POINT_EXPAND, pixel_boxes, region_densities

__all__ = ["gui_click", "gui_action_type", "gui_g1", "btl_ui", "gui_region_consistency", "box_closeness",
           "btl_format", "predictions_in_pixels"]

Coords = Tuple[float, ...]


def _column(columns: Dict[str, Any], name: str, reward: str, what: str) -> Sequence[Any]:
    if name not in columns:
        raise ValueError(f"reward '{reward}' needs the per-sample column '{name}' ({what})")
    return columns[name]


def _target(value: Any) -> Coords:
    """A ground-truth box as 4 floats; ValueError unless finite with x1 < x2 and y1 < y2."""
    box = tuple(float(v) for v in value) if value is not None else ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"bbox must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2, got {value!r}")
    return box


def predictions_in_pixels(completions: Sequence[Any], image_sizes: Sequence[Sequence[float]], coord_convention: str,
                          min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS) -> List[Optional[Coords]]:
    """Each completion's point or box in original pixels, or None when it has none or its box
    corners are out of order (``[x2, y2, x1, y1]`` is not a box)."""
    out: List[Optional[Coords]] = []
    for completion, size in zip(completions, image_sizes):
        raw = parse_prediction(completion_text(completion))
        if raw is None or (len(raw) == 4 and not is_ordered(raw)):
            out.append(None)
        else:
            out.append(to_original(raw, coord_convention, size, min_pixels, max_pixels))
    return out


def _unparsed(preds: Sequence[Optional[Any]]) -> List[float]:
    return [float(p is None) for p in preds]


@REWARDS.register("gui_click")
def gui_click(coord_convention: str, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS,
              strict: bool = False):
    """Click accuracy (UI-R1 arXiv 2503.21620, GUI-R1 arXiv 2504.10458, ScreenSpot's metric):
    1.0 when the predicted point (a box's centre) lies in the target ``bbox``, else 0.0.
    Edges count as inside (UI-R1, ScreenSpot); ``strict=True`` excludes them (GUI-R1).
    Columns: ``bbox``, ``image_size``."""
    check_coord_options(coord_convention, min_pixels, max_pixels)

    def reward(completions: List[Any], **columns: Any) -> Dict[str, List[float]]:
        targets = _column(columns, "bbox", "gui_click", "target box in original pixels")
        sizes = _column(columns, "image_size", "gui_click", "[W, H] of the original image")
        preds = predictions_in_pixels(completions, sizes, coord_convention, min_pixels, max_pixels)
        hits = [0.0 if p is None else float(point_in_box(box_center(p), _target(t), strict))
                for p, t in zip(preds, targets)]
        return {"score": hits, "unparsed": _unparsed(preds)}

    reward.__name__ = "gui_click"
    return reward


@REWARDS.register("gui_action_type")
def gui_action_type(default_action: str = "click"):
    """Action-type accuracy (UI-R1's R_action): 1.0 when the completion's action type
    (:func:`.parse.parse_action`: ``'action': 'x'`` in the answer, else "click" for a bare point
    or box) equals the ``action`` column, case-insensitively; a sample without that column or
    value expects ``default_action`` ("click")."""
    if not default_action.strip():
        raise ValueError("default_action must be a non-empty action name")

    def reward(completions: List[Any], **columns: Any) -> Dict[str, List[float]]:
        expected = columns["action"] if "action" in columns else [None] * len(completions)
        preds = [parse_action(completion_text(c)) for c in completions]
        scores = [float(p is not None and p == str(e or default_action).strip().lower()) for p, e in zip(preds, expected)]
        return {"score": scores, "unparsed": _unparsed(preds)}

    reward.__name__ = "gui_action_type"
    return reward


def box_closeness(pred: Sequence[float], target: Sequence[float], image_size: Sequence[float]) -> float:
    """GUI-G1's box-size term before its 0.125: the harmonic mean of ``1 - |Δx1|/W``,
    ``1 - |Δx2|/W``, ``1 - |Δy1|/H``, ``1 - |Δy2|/H``. Each term is clipped at 0 (a corner a
    whole image away) and any 0 makes the mean 0, where upstream divides by zero and gives 0."""
    width, height = float(image_size[0]), float(image_size[1])
    terms = [max(0.0, 1.0 - abs(p - t) / s) for p, t, s in zip(pred, target, (width, height) * 2)]
    if min(terms) <= 0.0:
        return 0.0
    return len(terms) / sum(1.0 / t for t in terms)


@REWARDS.register("gui_g1")
def gui_g1(coord_convention: str, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS,
           iou_weight: float = 0.25, box_weight: float = 0.125, difficulty_column: Optional[str] = "rate"):
    """GUI-G1's reward (Zhou et al., arXiv 2505.15810; ``grpo_rec.py``, reward_funcs iou hit
    box): ``w · (R_hit + iou_weight · IoU + box_weight · closeness)``.

    R_hit: the box's centre lies in ``bbox`` (edges included). IoU: continuous areas (upstream
    counts pixels and so zeroes overlaps of 1 px or less). closeness: :func:`box_closeness`,
    the box-size constraint against box-size hacking (hit rewards shrink boxes, IoU grows them).
    A point answer earns R_hit only. Sub-scores ``hit``, ``iou``, ``box`` (unweighted) are logged.

    ``w``: the per-sample difficulty weight, read from the column ``difficulty_column``
    (GUI-G1's data field ``rate``; 1 when absent or None; None turns it off). GUI-G1 puts it in
    the loss (``Σ_t loss_{i,t} · rate_i / 64``) with advantages ``r - mean_group(r)`` (no std) and
    β = 0; scaling the reward by ``w`` is then the same update, so use an advantage without std
    normalisation, no KL, and no length normalisation (sum over tokens / a constant) as the
    paper does: with std normalisation the weight cancels within a group.
    Columns: ``bbox``, ``image_size``, and ``difficulty_column``."""
    check_coord_options(coord_convention, min_pixels, max_pixels)

    def reward(completions: List[Any], **columns: Any) -> Dict[str, List[float]]:
        targets = _column(columns, "bbox", "gui_g1", "target box in original pixels")
        sizes = _column(columns, "image_size", "gui_g1", "[W, H] of the original image")
        weights = columns.get(difficulty_column) if difficulty_column else None
        preds = predictions_in_pixels(completions, sizes, coord_convention, min_pixels, max_pixels)
        out: Dict[str, List[float]] = {"score": [], "hit": [], "iou": [], "box": [], "unparsed": _unparsed(preds)}
        for i, (pred, target, size) in enumerate(zip(preds, targets, sizes)):
            target = _target(target)
            weight = 1.0 if weights is None or weights[i] is None else float(weights[i])
            if not (math.isfinite(weight) and weight >= 0.0):
                raise ValueError(f"difficulty weight '{difficulty_column}' must be finite and >= 0, got {weights[i]!r}")
            hit = iou = box = 0.0
            if pred is not None:
                hit = float(point_in_box(box_center(pred), target))
                if len(pred) == 4:
                    iou, box = box_iou(pred, target), box_closeness(pred, target, size)
            out["score"].append(weight * (hit + iou_weight * iou + box_weight * box))
            out["hit"].append(hit)
            out["iou"].append(iou)
            out["box"].append(box)
        return out

    reward.__name__ = "gui_g1"
    return reward


_BTL_LAYOUT = re.compile(r"\s*<blink>(.*?)</blink>\s*<think>.*?</think>\s*<link>(.*?)</link>", re.DOTALL)


def _tag(text: str, name: str) -> Optional[str]:
    m = re.search(rf"<{name}>(.*?)</{name}>", text, re.DOTALL)
    return m.group(1) if m else None


def btl_format(text: str) -> float:
    """BTL-UI's format reward: 1.0 when the completion starts ``<blink>`` json fence
    ``</blink>``, ``<think>...</think>``, ``<link>`` json fence ``</link>`` (whitespace between
    them allowed), both fences parse, and the link is one item with ``point_2d`` or with
    ``Plan`` and ``Action``. The released regex's ``js·on`` typo is fixed (see
    :data:`.parse.JSON_FENCE`), so this can be 1."""
    m = _BTL_LAYOUT.match(text)
    if not m or fenced_json(m.group(1)) is None:
        return 0.0
    link = fenced_json(m.group(2))
    if not (isinstance(link, list) and len(link) == 1 and isinstance(link[0], dict)):
        return 0.0
    return float("point_2d" in link[0] or ("Plan" in link[0] and "Action" in link[0]))


def _numbers(value: Any, count: int) -> Optional[Coords]:
    if not isinstance(value, (list, tuple)) or len(value) != count:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return tuple(float(v) for v in value)


@REWARDS.register("btl_ui")
def btl_ui(coord_convention: str, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS,
           format_weight: float = 0.1, blink_weight: float = 0.3, accuracy_weight: float = 0.6,
           iou_threshold: float = 0.5):
    """BTL-UI's Blink-Think-Link reward for grounding ("BTL-UI: Blink-Think-Link Reasoning
    Model for GUI Agent", arXiv 2509.15566; ``recipe/btl-ui/reward_fn.py``, weights of
    ``run_3b.sh``): ``0.1·format + 0.3·blink + 0.6·accuracy``.

    - format: :func:`btl_format`.
    - blink (process reward): 1 when the sample has no target box; else 1 when the ``bbox_2d``
      boxes of the ``<blink>`` fence survive NMS at ``iou_threshold`` unchanged (no pair
      overlaps with IoU >= 0.5: greedy NMS drops a box exactly when such a pair exists) and
      one of them has IoU > 0.5 with ``bbox``.
    - accuracy (outcome): the ``point_2d`` of the ``<link>`` fence lies strictly inside ``bbox``.
      Navigation actions (Tap, Swipe, Type, ...) are not scored here (grounding samples only).

    Blink boxes and the link point are in ``coord_convention``. Sub-scores ``format``,
    ``blink``, ``accuracy`` and ``unparsed`` (no link point) are logged.
    Columns: ``bbox`` (None: no target), ``image_size``."""
    check_coord_options(coord_convention, min_pixels, max_pixels)

    def pixels(coords: Coords, size: Sequence[float]) -> Coords:
        return to_original(coords, coord_convention, size, min_pixels, max_pixels)

    def blink_score(text: str, target: Optional[Coords], size: Sequence[float]) -> float:
        if target is None:
            return 1.0
        content = _tag(text, "blink")
        items = fenced_json(content) if content is not None else None
        if not isinstance(items, list) or not items:
            return 0.0
        boxes = [_numbers(x.get("bbox_2d"), 4) if isinstance(x, dict) else None for x in items]
        if any(b is None or not is_ordered(b) for b in boxes):
            return 0.0
        boxes = [pixels(b, size) for b in boxes]
        if any(box_iou(a, b) >= iou_threshold for i, a in enumerate(boxes) for b in boxes[i + 1:]):
            return 0.0
        return float(any(box_iou(b, target) > iou_threshold for b in boxes))

    def link_point(text: str, size: Sequence[float]) -> Optional[Coords]:
        content = _tag(text, "link")
        items = fenced_json(content) if content is not None else None
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            return None
        point = _numbers(items[0].get("point_2d"), 2)
        return pixels(point, size) if point is not None else None

    def reward(completions: List[Any], **columns: Any) -> Dict[str, List[float]]:
        targets = _column(columns, "bbox", "btl_ui", "target box in original pixels, or None")
        sizes = _column(columns, "image_size", "btl_ui", "[W, H] of the original image")
        out: Dict[str, List[float]] = {"score": [], "format": [], "blink": [], "accuracy": [], "unparsed": []}
        for completion, target, size in zip(completions, targets, sizes):
            text = completion_text(completion)
            target = None if target is None else _target(target)
            point = link_point(text, size)
            fmt, blink = btl_format(text), blink_score(text, target, size)
            accuracy = float(point is not None and target is not None and point_in_box(point, target, strict=True))
            out["score"].append(format_weight * fmt + blink_weight * blink + accuracy_weight * accuracy)
            for key, value in (("format", fmt), ("blink", blink), ("accuracy", accuracy), ("unparsed", float(point is None))):
                out[key].append(value)
        return out

    reward.__name__ = "btl_ui"
    return reward


@REWARDS.register("gui_region_consistency")
def gui_region_consistency(coord_convention: str, min_pixels: int = QWEN_MIN_PIXELS,
                           max_pixels: int = QWEN_MAX_PIXELS, point_expand: float = POINT_EXPAND,
                           group_column: str = "group_id"):
    """GUI-RCPO's label-free reward (arXiv 2508.05615, ``voting_reward``): each rollout's mean
    vote density inside its own box over the rollouts of its group, in [0, 1]
    (:func:`.vote.region_densities`); boxes clipped to the image, a point voting for a box of
    side ``point_expand`` (50 px, ±25), an unparseable rollout voting nothing and scoring 0.

    The group is the set of samples with equal values in the column ``group_column``
    (``group_id``: the env gives the G rollouts of one screenshot and instruction one id; they
    need not be adjacent). No target box is read. A group of one valid box scores 1. Samples
    whose id is None, or whose group mixes image sizes, score NaN, which the reward pipeline
    counts as failures (a wrong grouping must not pass as rewards).
    Columns: ``group_column``, ``image_size``."""
    check_coord_options(coord_convention, min_pixels, max_pixels)
    if not point_expand >= 0:
        raise ValueError(f"point_expand must be >= 0 px, got {point_expand}")

    def reward(completions: List[Any], **columns: Any) -> Dict[str, List[float]]:
        ids = _column(columns, group_column, "gui_region_consistency", "equal for the rollouts of one screenshot")
        sizes = _column(columns, "image_size", "gui_region_consistency", "[W, H] of the original image")
        preds = predictions_in_pixels(completions, sizes, coord_convention, min_pixels, max_pixels)
        scores = [math.nan] * len(completions)
        groups: Dict[Any, List[int]] = defaultdict(list)
        for i, gid in enumerate(ids):
            if gid is not None:
                groups[gid if isinstance(gid, (str, int, float)) else repr(gid)].append(i)
        for members in groups.values():
            size = [float(v) for v in sizes[members[0]]]
            if any([float(v) for v in sizes[i]] != size for i in members):
                continue
            boxes = pixel_boxes([preds[i] for i in members], size, point_expand)
            for i, score in zip(members, region_densities(boxes)):
                scores[i] = score
        return {"score": scores, "unparsed": _unparsed(preds)}

    reward.__name__ = "gui_region_consistency"
    return reward
