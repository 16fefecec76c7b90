"""Icon glyphs drawn from PIL primitives, so procedural screens need no icon files or fonts.

Each glyph is a function ``(draw, box, color, background)`` that paints inside the square
``box = (x1, y1, x2, y2)`` (pixels) through the helper ``_Pen``, which maps fractions of the box
to pixels. ``GLYPH_WORDS`` is how an instruction names a glyph ("click the gear icon").
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Tuple

from PIL import ImageDraw

RGB = Tuple[int, int, int]
Box = Tuple[float, float, float, float]


class _Pen:
    """Draws shapes given in fractions (0..1) of a square box; line width scales with the box."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: Box, color: RGB, background: RGB) -> None:
        self.draw, self.color, self.background = draw, color, background
        self.x, self.y = box[0], box[1]
        self.size = box[2] - box[0]
        self.width = max(1, round(self.size / 9))

    def p(self, fx: float, fy: float) -> Tuple[float, float]:
        return (self.x + fx * self.size, self.y + fy * self.size)

    def box(self, fx1: float, fy1: float, fx2: float, fy2: float) -> Tuple[float, ...]:
        return (*self.p(fx1, fy1), *self.p(fx2, fy2))

    def line(self, *points: Tuple[float, float]) -> None:
        self.draw.line([self.p(*q) for q in points], fill=self.color, width=self.width, joint="curve")

    def poly(self, *points: Tuple[float, float], hole: bool = False) -> None:
        self.draw.polygon([self.p(*q) for q in points], fill=self.background if hole else self.color)

    def rect(self, fx1: float, fy1: float, fx2: float, fy2: float, filled: bool = True, hole: bool = False) -> None:
        fill = self.background if hole else (self.color if filled else None)
        self.draw.rectangle(self.box(fx1, fy1, fx2, fy2), fill=fill,
                            outline=None if filled or hole else self.color, width=self.width)

    def circle(self, cx: float, cy: float, r: float, filled: bool = True, hole: bool = False) -> None:
        fill = self.background if hole else (self.color if filled else None)
        self.draw.ellipse(self.box(cx - r, cy - r, cx + r, cy + r), fill=fill,
                          outline=None if filled or hole else self.color, width=self.width)


def _gear(pen: _Pen) -> None:
    teeth = 8
    points = []
    for k in range(4 * teeth):  # two corners out, two in: square teeth
        angle = 2 * math.pi * (k + 0.5) / (4 * teeth)
        radius = 0.48 if (k // 2) % 2 == 0 else 0.36
        points.append((0.5 + radius * math.cos(angle), 0.5 + radius * math.sin(angle)))
    pen.poly(*points)
    pen.circle(0.5, 0.5, 0.14, hole=True)


def _trash(pen: _Pen) -> None:
    pen.rect(0.38, 0.08, 0.62, 0.18, filled=False)
    pen.line((0.12, 0.22), (0.88, 0.22))
    pen.poly((0.2, 0.3), (0.8, 0.3), (0.72, 0.92), (0.28, 0.92))
    pen.draw.line([pen.p(0.58, 0.4), pen.p(0.58, 0.82)], fill=pen.background, width=pen.width)
    pen.draw.line([pen.p(0.42, 0.4), pen.p(0.42, 0.82)], fill=pen.background, width=pen.width)


def _home(pen: _Pen) -> None:
    pen.poly((0.5, 0.08), (0.08, 0.5), (0.92, 0.5))
    pen.rect(0.2, 0.45, 0.8, 0.92)
    pen.rect(0.42, 0.62, 0.58, 0.92, hole=True)


def _search(pen: _Pen) -> None:
    pen.circle(0.4, 0.4, 0.28, filled=False)
    pen.line((0.6, 0.6), (0.9, 0.9))


def _star(pen: _Pen) -> None:
    points = []
    for k in range(10):
        angle = -math.pi / 2 + k * math.pi / 5
        radius = 0.48 if k % 2 == 0 else 0.2
        points.append((0.5 + radius * math.cos(angle), 0.54 + radius * math.sin(angle)))
    pen.poly(*points)


def _heart(pen: _Pen) -> None:
    pen.circle(0.3, 0.35, 0.22)
    pen.circle(0.7, 0.35, 0.22)
    pen.poly((0.09, 0.42), (0.91, 0.42), (0.5, 0.9))


def _bell(pen: _Pen) -> None:
    pen.draw.chord(pen.box(0.2, 0.1, 0.8, 0.7), 180, 360, fill=pen.color)
    pen.rect(0.2, 0.4, 0.8, 0.72)
    pen.rect(0.08, 0.7, 0.92, 0.78)
    pen.circle(0.5, 0.86, 0.08)


def _user(pen: _Pen) -> None:
    pen.circle(0.5, 0.3, 0.2)
    pen.draw.chord(pen.box(0.14, 0.56, 0.86, 1.28), 180, 360, fill=pen.color)


def _arrow(direction: str) -> Callable[[_Pen], None]:
    def draw(pen: _Pen) -> None:
        turn = {"left": lambda x, y: (x, y), "right": lambda x, y: (1 - x, y),
                "up": lambda x, y: (y, x), "down": lambda x, y: (y, 1 - x)}[direction]
        pen.line(turn(0.3, 0.5), turn(0.9, 0.5))
        pen.poly(turn(0.08, 0.5), turn(0.4, 0.2), turn(0.4, 0.8))

    return draw


def _transfer(direction: str) -> Callable[[_Pen], None]:
    def draw(pen: _Pen) -> None:
        head = (0.5, 0.62) if direction == "down" else (0.5, 0.08)
        tail = (0.5, 0.08) if direction == "down" else (0.5, 0.62)
        pen.line(tail, (0.5, 0.4))
        wing = 0.36 if direction == "down" else 0.34
        pen.poly(head, (0.22, wing), (0.78, wing))
        pen.rect(0.12, 0.82, 0.88, 0.92)

    return draw


def _folder(pen: _Pen) -> None:
    pen.poly((0.06, 0.2), (0.38, 0.2), (0.46, 0.3), (0.94, 0.3), (0.94, 0.84), (0.06, 0.84))


def _document(pen: _Pen) -> None:
    pen.poly((0.18, 0.06), (0.62, 0.06), (0.82, 0.26), (0.82, 0.94), (0.18, 0.94))
    for y in (0.45, 0.6, 0.75):
        pen.draw.line([pen.p(0.3, y), pen.p(0.7, y)], fill=pen.background, width=pen.width)


def _mail(pen: _Pen) -> None:
    pen.rect(0.06, 0.2, 0.94, 0.8, filled=False)
    pen.line((0.08, 0.24), (0.5, 0.56), (0.92, 0.24))


def _lock(pen: _Pen) -> None:
    pen.draw.arc(pen.box(0.28, 0.08, 0.72, 0.6), 180, 360, fill=pen.color, width=pen.width)
    pen.line((0.28, 0.34), (0.28, 0.46))
    pen.line((0.72, 0.34), (0.72, 0.46))
    pen.rect(0.16, 0.44, 0.84, 0.92)
    pen.circle(0.5, 0.66, 0.07, hole=True)


def _pencil(pen: _Pen) -> None:
    pen.poly((0.7, 0.1), (0.9, 0.3), (0.34, 0.86), (0.14, 0.66))
    pen.poly((0.14, 0.66), (0.34, 0.86), (0.06, 0.94))


def _calendar(pen: _Pen) -> None:
    pen.rect(0.1, 0.16, 0.9, 0.9, filled=False)
    pen.rect(0.1, 0.16, 0.9, 0.34)
    pen.line((0.3, 0.06), (0.3, 0.22))
    pen.line((0.7, 0.06), (0.7, 0.22))
    for y in (0.5, 0.72):
        for x in (0.3, 0.5, 0.7):
            pen.circle(x, y, 0.05)


def _grid(pen: _Pen) -> None:
    for x in (0.1, 0.56):
        for y in (0.1, 0.56):
            pen.rect(x, y, x + 0.34, y + 0.34)


def _refresh(pen: _Pen) -> None:
    pen.draw.arc(pen.box(0.14, 0.14, 0.86, 0.86), 30, 320, fill=pen.color, width=pen.width + 1)
    pen.poly((0.62, 0.04), (0.94, 0.2), (0.66, 0.4))


GLYPHS: Dict[str, Callable[[_Pen], None]] = {
    "gear": _gear,
    "trash": _trash,
    "plus": lambda pen: (pen.line((0.5, 0.1), (0.5, 0.9)), pen.line((0.1, 0.5), (0.9, 0.5))),
    "close": lambda pen: (pen.line((0.1, 0.1), (0.9, 0.9)), pen.line((0.9, 0.1), (0.1, 0.9))),
    "minus": lambda pen: pen.rect(0.12, 0.44, 0.88, 0.56),
    "maximize": lambda pen: pen.rect(0.14, 0.14, 0.86, 0.86, filled=False),
    "check": lambda pen: pen.line((0.12, 0.52), (0.4, 0.8), (0.9, 0.22)),
    "search": _search,
    "home": _home,
    "star": _star,
    "heart": _heart,
    "bell": _bell,
    "user": _user,
    "menu": lambda pen: [pen.rect(0.1, y, 0.9, y + 0.12) for y in (0.18, 0.44, 0.7)],
    "more": lambda pen: [pen.circle(x, 0.5, 0.1) for x in (0.16, 0.5, 0.84)],
    "back": _arrow("left"),
    "forward": _arrow("right"),
    "upload": _transfer("up"),
    "download": _transfer("down"),
    "play": lambda pen: pen.poly((0.2, 0.1), (0.88, 0.5), (0.2, 0.9)),
    "pause": lambda pen: (pen.rect(0.2, 0.12, 0.4, 0.88), pen.rect(0.6, 0.12, 0.8, 0.88)),
    "folder": _folder,
    "document": _document,
    "mail": _mail,
    "lock": _lock,
    "pencil": _pencil,
    "calendar": _calendar,
    "grid": _grid,
    "refresh": _refresh,
}

# How instructions name each glyph: "click the {word} icon".
GLYPH_WORDS: Dict[str, str] = {name: name for name in GLYPHS} | {
    "trash": "trash can", "search": "magnifying glass", "user": "person", "menu": "hamburger menu",
    "more": "three-dots", "back": "back arrow", "forward": "forward arrow", "mail": "envelope",
    "close": "X", "check": "check mark", "maximize": "maximize",
}

# Glyphs a careless reader confuses: the picker draws distractors from the same family.
GLYPH_FAMILIES: Sequence[Sequence[str]] = (
    ("gear", "grid"), ("trash", "minus"), ("plus", "close"), ("search", "refresh"),
    ("home", "folder"), ("star", "heart"), ("bell", "lock"), ("user",), ("menu", "more"),
    ("back", "forward"), ("upload", "download"), ("play", "pause"), ("document", "pencil"),
    ("mail", "calendar"), ("maximize", "check"),
)


def draw_glyph(draw: ImageDraw.ImageDraw, name: str, box: Box, color: RGB, background: RGB) -> None:
    """Paint glyph ``name`` inside the square pixel ``box``; ``background`` fills its holes."""
    GLYPHS[name](_Pen(draw, box, color, background))
