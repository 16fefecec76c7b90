"""GUI grounding: reading a click or a box from a completion, mapping it to the screenshot's
pixels, and scoring it (issue 12; formulas in research/anchors_multimodal.md section D).

- :mod:`.parse`: the point or box of a completion (``[x1,y1,x2,y2]``, ``(x, y)``,
  ``bbox_2d``/``point_2d`` JSON, json fences, ``<answer>`` tags);
- :mod:`.coords`: model conventions (``abs``, ``abs_resized`` after Qwen's ``smart_resize``,
  ``norm1000``, ``norm1``) to and from original pixels, and box geometry;
- :mod:`.vote`: region votes over several outputs of one screenshot: GUI-RCPO's densities and
  GUI-RC's test-time answer :func:`region_vote`;
- :mod:`.rewards`: the registered rewards ``gui_click``, ``gui_action_type``, ``gui_g1``,
  ``btl_ui`` and ``gui_region_consistency``.

Pure Python, numpy and (optionally) scipy; nothing heavy is imported.
"""
from __future__ import annotations

from workbench.rewards.gui.coords import CONVENTIONS, from_original, smart_resize, to_original
from workbench.rewards.gui.parse import parse_action, parse_prediction
from workbench.rewards.gui.rewards import (box_closeness, btl_format, btl_ui, gui_action_type, gui_click, gui_g1,
                                           gui_region_consistency, predictions_in_pixels)
from workbench.rewards.gui.vote import region_densities, region_vote

__all__ = ["CONVENTIONS", "from_original", "smart_resize", "to_original", "parse_action", "parse_prediction",
           "box_closeness", "btl_format", "btl_ui", "gui_action_type", "gui_click", "gui_g1", "gui_region_consistency",
           "predictions_in_pixels", "region_densities", "region_vote"]
