"""Reading a click point or a box out of a GUI grounding completion.

Models write their answer in several conventions; all of these are read:

- ``[x1, y1, x2, y2]`` or ``(x1, y1, x2, y2)``: a box; ``(x, y)`` or ``[x, y]``: a point;
- JSON or Python dicts ``{"bbox_2d": [...]}`` / ``{"point_2d": [...]}`` (Qwen2.5-VL, GUI-G1,
  BTL-UI; also ``bbox``, ``point``, ``coordinate``, ``position``), bare or inside a json fence;
- any of them inside ``<answer>...</answer>`` (UI-R1, GUI-R1).

Rules, in order: when the completion has an ``<answer>`` tag only the content of the last
non-empty one is read (coordinates in the reasoning do not count, and an answer without
coordinates is unparseable); within that text a keyed list (``"bbox_2d": [...]``) wins over a
bare one, so a label such as ``"Save (1, 2)"`` is not taken for a point; among several the LAST
is the answer. The number of values says what it is: 2 a point, 4 a box; anything else is
unparseable. Values are returned as written, in the model's coordinate convention
(:mod:`.coords` maps them to pixels).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Optional, Tuple

__all__ = ["JSON_FENCE", "answer_text", "parse_prediction", "parse_action", "fenced_json"]

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# A json code fence. BTL-UI's released format regex (recipe/btl-ui/reward_fn.py line 38) spells
# ``js·on`` with a U+00B7 middle dot inside, so it never matches a real fence and its format
# reward is always 0; this one matches ```json, optional spaces and a newline, lazily to ```.
JSON_FENCE = re.compile(r"```json[ \t]*\r?\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_FENCED_BLOCK = re.compile(r"\s*```json[ \t]*\r?\n?(.*?)```\s*", re.DOTALL | re.IGNORECASE)

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_LIST = rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})(?:\s*,\s*({_NUM})\s*,\s*({_NUM}))?\s*[\])]"
_KEYED_LIST = re.compile(rf"""["']?(?:bbox_2d|point_2d|bbox|point|coordinates?|position)["']?\s*[:=]\s*{_LIST}""",
                         re.IGNORECASE)
_BARE_LIST = re.compile(_LIST)
_ACTION = re.compile(r"""["']?action(?:_type)?["']?\s*[:=]\s*["']([A-Za-z_ ]+?)["']""", re.IGNORECASE)


def answer_text(text: str) -> str:
    """The content of the last non-empty ``<answer>`` tag; the whole text when there is no
    answer tag; "" when every answer tag is empty."""
    tags = ANSWER_TAG.findall(text)
    if not tags:
        return text
    filled = [t for t in tags if t.strip()]
    return filled[-1] if filled else ""


def parse_prediction(text: str) -> Optional[Tuple[float, ...]]:
    """``(x, y)`` or ``(x1, y1, x2, y2)`` as written in ``text`` (see the module rules), or
    None when there is none or a value is not finite (``1e999``-sized digit strings)."""
    region = answer_text(text)
    matches = _KEYED_LIST.findall(region) or _BARE_LIST.findall(region)
    if not matches:
        return None
    values = tuple(float(v) for v in matches[-1] if v != "")
    return values if all(math.isfinite(v) for v in values) else None


def parse_action(text: str) -> Optional[str]:
    """The action type of a completion, lower-cased: the last ``'action': 'click'`` (UI-R1 /
    GUI-R1 answers) in the answer text; else ``"click"`` when the answer holds a point or a box
    (a grounding answer is a click); else None."""
    region = answer_text(text)
    found = _ACTION.findall(region)
    if found:
        return found[-1].strip().lower()
    return "click" if parse_prediction(text) is not None else None


def fenced_json(block: str) -> Optional[Any]:
    """The JSON value of ``block`` when the block is exactly one json fence (whitespace around
    allowed), else None (no fence, stray text, or JSON that does not parse)."""
    m = _FENCED_BLOCK.fullmatch(block)
    if not m:
        return None
    try:
        return json.loads(m.group(1))
    except ValueError:
        return None
