"""Region consistency over several outputs for one screenshot ("Test-Time Reinforcement
Learning for GUI Grounding via Region Consistency", arXiv 2508.05615; ZJU-REAL/GUI-RCPO):
every output votes for the pixels of its box, and the votes agree where the model is
consistent.

- :func:`region_densities` is GUI-RCPO's label-free reward (``grpo_jsonl.py::voting_reward``):
  each output's mean vote inside its own box over the maximum vote, in [0, 1].
- :func:`region_vote` is GUI-RC's test-time answer (``GUI-RC/evaluation.py``): the largest
  connected component of the maximum-vote region, and the centre of its bounding box.

Both take outputs already in original-image pixels (:mod:`.coords`): a box, a point (made a
box of side ``point_expand``: GUI-RC's ``POINT_EXPAND_SIZE`` = 50, ±25 px) or None (an
unparseable output, which votes nothing). Boxes are put on the pixel grid as GUI-RCPO does:
corners truncated with ``int()``, then clipped to the image, covering columns ``x1 .. x2-1``
and rows ``y1 .. y2-1``; a box left with no pixel votes nothing and scores 0.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from workbench.rewards.gui.coords import point_box

__all__ = ["POINT_EXPAND", "pixel_boxes", "region_densities", "region_vote"]

POINT_EXPAND = 50  # GUI-RC POINT_EXPAND_SIZE: side of the box a point votes for, in px

PixelBox = Tuple[int, int, int, int]


def pixel_boxes(outputs: Sequence[Optional[Sequence[float]]], image_size: Sequence[float],
                point_expand: float = POINT_EXPAND) -> List[Optional[PixelBox]]:
    """Each output as integer pixel bounds ``(x1, y1, x2, y2)`` (end-exclusive) inside the
    image, or None when it is None or covers no pixel."""
    width, height = int(image_size[0]), int(image_size[1])
    out: List[Optional[PixelBox]] = []
    for coords in outputs:
        if coords is None:
            out.append(None)
            continue
        x1, y1, x2, y2 = (int(v) for v in point_box(coords, point_expand))
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
        out.append((x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None)
    return out


def _vote_grid(boxes: Sequence[Optional[PixelBox]]) -> Tuple[np.ndarray, int, int]:
    """Votes [rows, cols] int32 over the bounding rectangle of the boxes, and its (x, y)
    offset in the image (a 4K screenshot needs no 4K grid when the votes are local)."""
    valid = [b for b in boxes if b is not None]
    ox, oy = min(b[0] for b in valid), min(b[1] for b in valid)
    grid = np.zeros((max(b[3] for b in valid) - oy, max(b[2] for b in valid) - ox), dtype=np.int32)
    for x1, y1, x2, y2 in valid:
        grid[y1 - oy:y2 - oy, x1 - ox:x2 - ox] += 1
    return grid, ox, oy


def region_densities(boxes: Sequence[Optional[PixelBox]]) -> List[float]:
    """GUI-RCPO reward of each output of ONE group (boxes from :func:`pixel_boxes`):
    ``r_i = sum_{p in box_i} grid(p) / (v_max * |box_i|)``, ``grid`` = votes of all boxes of
    the group, ``v_max`` its maximum; 0 for a None box. A group of one valid box scores 1."""
    if all(b is None for b in boxes):
        return [0.0] * len(boxes)
    grid, ox, oy = _vote_grid(boxes)
    v_max = float(grid.max())
    scores = []
    for b in boxes:
        if b is None:
            scores.append(0.0)
            continue
        x1, y1, x2, y2 = b
        region = grid[y1 - oy:y2 - oy, x1 - ox:x2 - ox]
        scores.append(float(region.sum()) / (v_max * region.size))
    return scores


def _components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """4-connected components of a boolean mask, labelled 1..n in raster order of their first
    pixel (what ``scipy.ndimage.label`` returns; a BFS when scipy is not installed)."""
    try:
        from scipy.ndimage import label
    except ImportError:
        return _bfs_components(mask)
    labels, n = label(mask)
    return labels, int(n)


def _bfs_components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    labels = np.zeros(mask.shape, dtype=np.int32)
    rows, cols = mask.shape
    n = 0
    for start in zip(*np.nonzero(mask)):  # raster order
        if labels[start]:
            continue
        n += 1
        labels[start] = n
        queue = [start]
        while queue:
            r, c = queue.pop()
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < rows and 0 <= nc < cols and mask[nr, nc] and not labels[nr, nc]:
                    labels[nr, nc] = n
                    queue.append((nr, nc))
    return labels, n


def region_vote(outputs: Sequence[Optional[Sequence[float]]], image_size: Sequence[float],
                point_expand: float = POINT_EXPAND) -> Tuple[Optional[Tuple[float, float]], Optional[PixelBox]]:
    """GUI-RC's answer from K outputs for one screenshot, in original pixels: ``(click point,
    consensus box)``. The box bounds the largest 4-connected component of the pixels with the
    maximum vote (the first in raster order on a tie in area, as GUI-RC's strict ``>``), as
    ``(x1, y1, x2, y2)`` end-exclusive; the point is its centre ``((x1 + x2) / 2, (y1 + y2) /
    2)``. ``(None, None)`` when no output covers a pixel of the image."""
    boxes = pixel_boxes(outputs, image_size, point_expand)
    if all(b is None for b in boxes):
        return None, None
    grid, ox, oy = _vote_grid(boxes)
    labels, n = _components(grid == grid.max())
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    best = int(np.argmax(areas)) + 1  # argmax takes the first maximum
    rows, cols = np.nonzero(labels == best)
    box = (int(cols.min()) + ox, int(rows.min()) + oy, int(cols.max()) + 1 + ox, int(rows.max()) + 1 + oy)
    return ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0), box
