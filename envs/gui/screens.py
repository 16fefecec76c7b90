"""Procedural GUI screens drawn with PIL: unlimited GUI grounding samples with a difficulty knob.

A screen is a desktop window (title bar, menu bar, toolbar, tabs, sidebar, form panel, open
menus, dialogs), a web page (navigation bar, sidebar, content, footer) or a phone app (app bar,
tabs, content, bottom navigation), in one of several palettes (``STYLES``) and resolutions
(``LAYOUTS``), all chosen by the seed. Every clickable thing drawn is an ``Element`` with its box;
an instruction names one element by kind and label ("click the Save as button"), adding its
container ("click the gear icon in the toolbar") when the label alone is ambiguous, and an element
no instruction can single out is never a target (it stays as a distractor).

``difficulty`` in [0, 1] raises the number of elements and the clutter, shrinks the elements
(GUI-G1, arXiv 2505.15810, finds small targets are where grounding fails) and raises the chance
that a new label is a near-duplicate of one already on screen ("Save" / "Save as", "Set" /
"Settings") or that an icon repeats a glyph from another bar. Samples follow the contract of
``envs.gui`` with ``source="procedural"``; accuracy is the click point inside ``bbox``, as in
ScreenSpot (SeeClick) and ScreenSpot-Pro.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from envs.gui.glyphs import GLYPH_FAMILIES, GLYPH_WORDS, draw_glyph
from workbench.registry import ConfigError

RGB = Tuple[int, int, int]
Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class Style:
    """A palette; ``outlined`` draws borders around buttons and icons (classic desktop look)."""

    name: str
    desktop: RGB
    window: RGB
    bar: RGB
    bar_text: RGB
    text: RGB
    muted: RGB
    button: RGB
    button_text: RGB
    border: RGB
    field: RGB
    accent: RGB
    icon: RGB
    radius: float
    outlined: bool = False


STYLES: Dict[str, Style] = {s.name: s for s in (
    Style("light", (58, 110, 165), (246, 246, 246), (225, 225, 228), (30, 30, 30), (25, 25, 25), (120, 120, 120),
          (0, 120, 215), (255, 255, 255), (170, 170, 170), (255, 255, 255), (0, 120, 215), (60, 60, 60), 0.25),
    Style("dark", (20, 24, 32), (37, 37, 38), (51, 51, 55), (220, 220, 220), (230, 230, 230), (140, 140, 140),
          (14, 99, 156), (255, 255, 255), (90, 90, 95), (60, 60, 60), (55, 148, 255), (200, 200, 200), 0.15),
    Style("flat", (236, 239, 241), (255, 255, 255), (33, 150, 243), (255, 255, 255), (33, 33, 33), (117, 117, 117),
          (76, 175, 80), (255, 255, 255), (210, 210, 210), (245, 245, 245), (255, 87, 34), (66, 66, 66), 0.0),
    Style("bordered", (0, 128, 128), (212, 208, 200), (10, 36, 106), (255, 255, 255), (0, 0, 0), (90, 90, 90),
          (212, 208, 200), (0, 0, 0), (64, 64, 64), (255, 255, 255), (10, 36, 106), (0, 0, 0), 0.0, True),
)}

# layout -> (platform written into samples, screen sizes [W, H] the seed picks from)
LAYOUTS: Dict[str, Tuple[str, Tuple[Tuple[int, int], ...]]] = {
    "desktop": ("desktop", ((1280, 800), (1440, 900), (1920, 1080))),
    "web": ("web", ((1024, 768), (1280, 720), (1366, 768))),
    "phone": ("mobile", ((360, 720), (390, 844), (412, 915))),
}

# Label families: a near-duplicate distractor is drawn from the family of a label already shown.
POOLS: Dict[str, Sequence[Sequence[str]]] = {
    "button": (("Save", "Save as", "Save all"), ("Settings", "Set", "Setup", "Reset"), ("Open", "Open recent", "Reopen"),
               ("Print", "Print preview"), ("Export", "Export as", "Import"), ("Delete", "Delete all"),
               ("Close", "Close all"), ("Edit", "Edit profile", "Editor"), ("Add", "Add user", "Add file"),
               ("Sign in", "Sign up", "Sign out"), ("Next", "Next page", "Previous"), ("Copy", "Copy link"),
               ("Share", "Share link"), ("Help", "Help center"), ("View", "Preview", "Review"), ("Send", "Resend"),
               ("Apply", "Apply all"), ("Cancel", "Cancel order"), ("Update", "Update all", "Updates"),
               ("New", "New file", "New folder"), ("Upload", "Upload file", "Download"), ("Refresh", "Restore"),
               ("Filter", "Clear filter"), ("Submit", "Submit form"), ("Undo", "Redo")),
    "field": (("Email", "Email address", "Backup email"), ("Name", "First name", "Last name", "Username"),
              ("Password", "Confirm password", "Old password"), ("Phone", "Phone number"), ("Address", "IP address"),
              ("City", "Country"), ("Date", "Start date", "End date"), ("Company", "Company size"),
              ("Subject", "Message"), ("Website", "Web page"), ("Amount", "Amount due"), ("Tags", "Tag name")),
    "checkbox": (("Remember me", "Remember password"), ("Dark mode", "Dark theme"),
                 ("Notifications", "Email notifications"), ("Auto update", "Auto save"),
                 ("Show hidden files", "Show hints"), ("Subscribe", "Subscribe to newsletter"),
                 ("Accept terms", "Accept cookies"), ("Word wrap", "Wrap lines"), ("Sync", "Sync now")),
    "tab": (("General", "General settings"), ("Advanced",), ("Account", "Accounts"), ("Privacy", "Security"),
            ("Overview", "Over time"), ("Details", "Detail view"), ("Files", "File types"), ("Activity",),
            ("Display", "Display settings"), ("Home", "Homepage")),
    "menu": (("File", "Files"), ("Edit",), ("View", "Views"), ("Insert",), ("Format",), ("Tools", "Toolbox"),
             ("Window", "Windows"), ("Help",), ("Run",), ("Go",), ("Selection", "Select")),
    "list": (("Inbox", "Inbox zero"), ("Sent", "Sent items"), ("Drafts", "Draft"), ("Archive", "Archived"),
             ("Documents", "Document scans"), ("Downloads", "Download queue"), ("Music", "Music videos"),
             ("Pictures", "Picture frames"), ("Projects", "Project notes"), ("Recent", "Recently added"),
             ("Favorites", "Favorite places"), ("Shared with me", "Shared"), ("Starred", "Stars"), ("Trash",)),
    "link": (("About", "About us"), ("Pricing", "Price list"), ("Blog", "Blogs"), ("Contact", "Contact us"),
             ("Docs", "Documentation"), ("Careers", "Career tips"), ("Support", "Support plans"),
             ("Log in", "Login help"), ("Products", "Product tour"), ("News", "Newsletter"), ("Home", "Homepage")),
    "glyph": GLYPH_FAMILIES,
}
APPLICATIONS = ("Notes", "Mail", "Photos", "Editor", "Files", "Calendar", "Music", "Terminal", "Tasks", "Chat")
SITES = ("Shopfront", "Newsroom", "TravelHub", "DevDocs", "CloudDesk", "Recipes", "Bookshelf")
DIALOGS = ("Save as", "Preferences", "Confirm", "Export", "New project")
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore".split()

TEMPLATES: Dict[str, Tuple[str, ...]] = {
    "button": ("{verb} the {label} button", "{verb} the '{label}' button"),
    "icon": ("{verb} the {label} icon", "{verb} on the {label} icon"),
    "field": ("select the '{label}' field", "{verb} the {label} text field", "{verb} into the '{label}' input box"),
    "checkbox": ("{verb} the '{label}' checkbox", "toggle the '{label}' checkbox"),
    "tab": ("switch to the {label} tab", "{verb} the '{label}' tab"),
    "menu": ("open the {label} menu", "{verb} the '{label}' menu"),
    "menu item": ("{verb} the '{label}' menu item", "choose the {label} item in the open menu"),
    "list item": ("{verb} the '{label}' list item", "select {label} in the list"),
    "link": ("{verb} the '{label}' link", "follow the {label} link"),
}


@dataclass
class Element:
    """One clickable thing as drawn: ``box`` [x1, y1, x2, y2] in pixels, ``backdrop`` the colour
    it sits on (tests check its pixels differ from it), ``label`` its text or glyph name."""

    kind: str
    label: str
    box: Box
    container: str
    backdrop: RGB

    @property
    def data_type(self) -> str:
        return "icon" if self.kind == "icon" else "text"

    @property
    def name(self) -> str:
        return GLYPH_WORDS[self.label] if self.kind == "icon" else self.label


@dataclass
class Screen:
    """A drawn screen: the image, every element on it, and what the seed chose."""

    image: Image.Image
    elements: List[Element]
    layout: str
    platform: str
    style: str
    application: str
    seed: int
    difficulty: float
    targets: List[Tuple[Element, str]] = field(default_factory=list)  # (element, instruction)


class Block(NamedTuple):
    """A widget awaiting a place: its size, and how to draw it at a top-left corner."""

    width: float
    height: float
    draw: Callable[[float, float], None]


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=8192)
def _text_extent(size: int, text: str) -> Tuple[float, Box]:
    """Advance width and ink box (relative to a left-middle anchor) of ``text``; cached, because
    measuring costs as much as drawing and labels repeat across screens."""
    font = _font(size)
    return font.getlength(text), font.getbbox(text, anchor="lm")


def _readable_on(color: RGB) -> RGB:
    """Black or white, whichever reads on ``color`` (text on accent-filled selections)."""
    return (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 150 else (255, 255, 255)


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class _Canvas:
    """The image being drawn, its element list, sizes derived from the font, and label picking."""

    def __init__(self, size: Tuple[int, int], style: Style, font_px: int, rng: random.Random, similar: float) -> None:
        self.size, self.style, self.rng, self.similar = size, style, rng, similar
        self.image = Image.new("RGB", size, style.desktop)
        self.draw = ImageDraw.Draw(self.image)
        self.elements: List[Element] = []
        self.used: Dict[str, List[str]] = {}
        self.font_px = font_px
        self.row = round(font_px * 1.9)
        self.pad = max(3, round(font_px * 0.7))
        self.gap = max(4, round(font_px * 0.6))
        self.icon = round(font_px * 1.8)
        self.bar = self.icon + self.gap  # title bars, toolbars, taskbars: an icon with a margin
        self.label_height = round(font_px * 1.6) + 2  # a field's label above its input box

    # -- labels -----------------------------------------------------------------------------------
    def pick(self, pool: str, exclude: Sequence[str] = ()) -> str:
        """A label from ``pool``: with probability ``similar`` a sibling of one already used."""
        families, used = POOLS[pool], self.used.setdefault(pool, [])
        taken = set(used) | set(exclude)
        near = [label for fam in families if taken & set(fam) for label in fam if label not in taken]
        fresh = [fam for fam in families if not taken & set(fam)]
        if near and (self.rng.random() < self.similar or not fresh):
            label = self.rng.choice(near)
        elif fresh:
            label = self.rng.choice(self.rng.choice(fresh))
        else:
            label = self.rng.choice([label for fam in families for label in fam])
        used.append(label)
        return label

    def pick_glyph(self, container: str) -> str:
        """A glyph new to ``container``; sometimes (``similar``/2) one shown in another bar."""
        here = [e.label for e in self.elements if e.kind == "icon" and e.container == container]
        elsewhere = [e.label for e in self.elements if e.kind == "icon" and e.label not in here]
        if elsewhere and self.rng.random() < self.similar / 2:
            return self.rng.choice(elsewhere)
        return self.pick("glyph", exclude=here)

    # -- primitives -------------------------------------------------------------------------------
    def font_size(self, scale: float = 1.0) -> int:
        return max(6, round(self.font_px * scale))

    def text_width(self, text: str, scale: float = 1.0) -> float:
        return _text_extent(self.font_size(scale), text)[0]

    def fill(self, box: Box, color: RGB, outline: Optional[RGB] = None, radius: float = 0.0) -> None:
        """Fill pixels [x1, x2) x [y1, y2); ``radius`` is a fraction of the box height."""
        x1, y1, x2, y2 = box
        corner = round(radius * (y2 - y1))
        self.draw.rounded_rectangle((x1, y1, x2 - 1, y2 - 1), corner, fill=color, outline=outline)

    def write(self, x: float, y_mid: float, text: str, color: RGB, scale: float = 1.0) -> Box:
        """Text starting at ``x``, centred on ``y_mid``; returns its ink box."""
        size = self.font_size(scale)
        self.draw.text((x, y_mid), text, fill=color, font=_font(size), anchor="lm")
        x1, y1, x2, y2 = _text_extent(size, text)[1]
        return (x + x1, y_mid + y1, x + x2, y_mid + y2)

    def add(self, kind: str, label: str, box: Box, container: str, backdrop: RGB) -> None:
        box = tuple(float(v) for v in box)
        if 0 <= box[0] < box[2] <= self.size[0] and 0 <= box[1] < box[3] <= self.size[1]:
            self.elements.append(Element(kind, label, box, container, backdrop))

    def cover(self, box: Box) -> None:
        """Forget the elements an overlay (menu, dialog) is about to hide or crowd (3 px margin)."""
        margin = (box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3)
        self.elements = [e for e in self.elements if not _overlaps(e.box, margin)]

    # -- widgets (each returns the width it used) ---------------------------------------------------
    def button(self, x: float, y: float, label: str, container: str, backdrop: RGB, width: float = 0.0) -> float:
        s = self.style
        w = max(width, self.text_width(label) + 2 * self.pad)
        self.fill((x, y, x + w, y + self.row), s.button, s.border if s.outlined else None, s.radius)
        self.write(x + (w - self.text_width(label)) / 2, y + self.row / 2, label, s.button_text)
        self.add("button", label, (x, y, x + w, y + self.row), container, backdrop)
        return w

    def icon_button(self, x: float, y: float, glyph: str, container: str, backdrop: RGB, color: RGB) -> float:
        size = self.icon
        if self.style.outlined:
            self.fill((x, y, x + size, y + size), backdrop, self.style.border)
        inset = round(size * 0.2)
        draw_glyph(self.draw, glyph, (x + inset, y + inset, x + size - inset, y + size - inset), color, backdrop)
        self.add("icon", glyph, (x, y, x + size, y + size), container, backdrop)
        return size

    def text_cell(self, kind: str, x: float, y: float, label: str, container: str, backdrop: RGB,
                  color: RGB, selected: bool = False) -> float:
        """A menu title, tab or link: padded text, filled in the accent colour when selected."""
        w = self.text_width(label) + 2 * self.pad
        if selected:
            self.fill((x, y, x + w, y + self.row), self.style.accent)
        self.write(x + self.pad, y + self.row / 2, label, _readable_on(self.style.accent) if selected else color)
        self.add(kind, label, (x, y, x + w, y + self.row), container, backdrop)
        return w

    def field(self, x: float, y: float, label: str, container: str, backdrop: RGB, input_w: float,
              above: bool) -> None:
        s = self.style
        self.write(x, y + self.font_px * 0.7 if above else y + self.row / 2, label, s.text)
        fx = x if above else x + self.text_width(label) + self.gap
        fy = y + self.label_height if above else y
        self.fill((fx, fy, fx + input_w, fy + self.row), s.field, s.border, s.radius / 2)
        hint = "Enter " + label.lower()
        if self.rng.random() < 0.4 and self.text_width(hint, 0.9) + 2 * self.pad < input_w:
            self.write(fx + self.pad, fy + self.row / 2, hint, s.muted, 0.9)
        self.add("field", label, (fx, fy, fx + input_w, fy + self.row), container, backdrop)

    def checkbox(self, x: float, y: float, label: str, container: str, backdrop: RGB) -> None:
        s, side = self.style, round(self.font_px * 1.1)
        top = y + (self.row - side) / 2
        checked = self.rng.random() < 0.5
        self.fill((x, top, x + side, top + side), s.accent if checked else s.field, s.border)
        if checked:
            draw_glyph(self.draw, "check", (x + 2, top + 2, x + side - 2, top + side - 2), _readable_on(s.accent), s.accent)
        ink = self.write(x + side + self.gap, y + self.row / 2, label, s.text)
        self.add("checkbox", label, (x, min(top, ink[1]), ink[2], max(top + side, ink[3])), container, backdrop)

    def list_items(self, x: float, y: float, width: float, labels: Sequence[str], container: str,
                   backdrop: RGB, glyphs: bool, text: RGB) -> None:
        s, selected = self.style, self.rng.randrange(len(labels) + 2)
        side = round(self.font_px * 1.1)
        room = width - 2 * self.pad - (side + self.gap if glyphs else 0)
        labels = [label for label in labels if self.text_width(label) <= room]  # no text spills out
        for i, label in enumerate(labels):
            top = y + i * self.row
            if i == selected:
                self.fill((x, top, x + width, top + self.row), s.accent)
            color = _readable_on(s.accent) if i == selected else text
            tx = x + self.pad
            if glyphs:
                glyph = self.rng.choice(list(GLYPH_WORDS))
                draw_glyph(self.draw, glyph, (tx, top + (self.row - side) / 2, tx + side, top + (self.row + side) / 2),
                           color, s.accent if i == selected else backdrop)
                tx += side + self.gap
            self.write(tx, top + self.row / 2, label, color)
            self.draw.line((x, top + self.row - 1, x + width - 1, top + self.row - 1), fill=s.border)
            self.add("list item", label, (x, top, x + width, top + self.row), container, backdrop)

    def paragraph(self, x: float, y: float, width: float, lines: int) -> None:
        for i in range(lines):
            words, text = self.rng.sample(WORDS, 6), ""
            for word in words:
                if self.text_width(text + " " + word, 0.9) > width:
                    break
                text = (text + " " + word).strip()
            self.write(x, y + (i + 0.5) * self.font_px * 1.4, text, self.style.muted, 0.9)

    def picture(self, box: Box) -> None:
        x1, y1, x2, y2 = box
        self.fill(box, self.style.border)
        self.draw.polygon([(x1 + 2, y2 - 2), ((x1 + x2) / 2, y1 + (y2 - y1) / 3), (x2 - 2, y2 - 2)],
                          fill=self.style.muted)


def flow(region: Box, blocks: Sequence[Block], gap: float) -> None:
    """Place blocks left to right in rows inside ``region`` (a block that does not fit is dropped),
    then spread the rows down the region so a sparse panel does not crowd its top edge."""
    x1, y1, x2, y2 = region
    rows: List[List[Tuple[Block, float]]] = [[]]
    x, y, row_height, heights = x1, y1, 0.0, []
    for block in blocks:
        if block.width > x2 - x1:
            continue
        if x + block.width > x2 and rows[-1]:
            rows.append([])
            heights.append(row_height)
            x, y, row_height = x1, y + row_height + gap, 0.0
        if y + block.height > y2:
            continue
        rows[-1].append((block, x))
        x, row_height = x + block.width + gap, max(row_height, block.height)
    heights.append(row_height)
    spare = y2 - (y + row_height)
    extra = min(spare / len(rows), 3.0 * gap) if spare > 0 else 0.0
    y = y1
    for row, height in zip(rows, heights):
        for block, x in row:
            block.draw(x, y)
        y += height + gap + extra


def _content_blocks(c: _Canvas, count: int, clutter: int, container: str, backdrop: RGB, max_w: float,
                    phone: bool) -> List[Block]:
    """``count`` widgets and ``clutter`` decorations for a panel, in random order."""
    rng, blocks = c.rng, []
    kinds = rng.choices(("button", "field", "checkbox", "icon", "list"), weights=(3, 3, 2, 2, 1), k=count)
    for kind in kinds:
        if kind == "button":
            label = c.pick("button")
            wide = max_w if phone and rng.random() < 0.4 else 0.0
            w = max(wide, c.text_width(label) + 2 * c.pad)
            blocks.append(Block(w, c.row, lambda x, y, label=label, w=w: c.button(x, y, label, container, backdrop, w)))
        elif kind == "field":
            label, above = c.pick("field"), phone or rng.random() < 0.4
            input_w = min(c.font_px * rng.uniform(8, 16), max_w * 0.9)
            w = max(c.text_width(label), input_w) if above else c.text_width(label) + c.gap + input_w
            h = c.row + c.label_height if above else c.row
            blocks.append(Block(w, h, lambda x, y, label=label, iw=input_w, a=above:
                                c.field(x, y, label, container, backdrop, iw, a)))
        elif kind == "checkbox":
            label = c.pick("checkbox")
            w = round(c.font_px * 1.1) + c.gap + c.text_width(label) + 1
            blocks.append(Block(w, c.row, lambda x, y, label=label: c.checkbox(x, y, label, container, backdrop)))
        elif kind == "icon":
            glyph = c.pick_glyph(container)
            blocks.append(Block(c.icon, c.icon, lambda x, y, g=glyph:
                                c.icon_button(x, y, g, container, backdrop, c.style.icon)))
        else:
            labels = [c.pick("list") for _ in range(rng.randint(2, 5))]
            w = min(max_w, max(c.text_width(t) for t in labels) + c.font_px * rng.uniform(4, 8))
            blocks.append(Block(w, len(labels) * c.row, lambda x, y, labels=labels, w=w:
                                c.list_items(x, y, w, labels, container, backdrop, rng.random() < 0.5, c.style.text)))
    for _ in range(clutter):
        if rng.random() < 0.6:
            w, lines = min(max_w, c.font_px * rng.uniform(10, 24)), rng.randint(1, 3)
            blocks.append(Block(w, lines * c.font_px * 1.4, lambda x, y, w=w, n=lines: c.paragraph(x, y, w, n)))
        else:
            w, h = c.font_px * rng.uniform(5, 10), c.font_px * rng.uniform(3, 6)
            blocks.append(Block(w, h, lambda x, y, w=w, h=h: c.picture((x, y, x + w, y + h))))
    rng.shuffle(blocks)
    return blocks


def _fill_panel(c: _Canvas, region: Box, container: str, difficulty: float, phone: bool = False) -> None:
    """Widgets and clutter for a content area: 4..20 widgets and 0..6 decorations by difficulty,
    times how many font-sized cells the area holds beyond a small screen's (dense big screens)."""
    width, height = region[2] - region[0], region[3] - region[1]
    room = max(1.0, width * height / (c.font_px ** 2 * 2000))
    count = round(_lerp(4, 20, difficulty) * room) + c.rng.randint(0, 3)
    clutter = round(_lerp(0, 6, difficulty) * room) + c.rng.randint(0, 2)
    flow(region, _content_blocks(c, count, clutter, container, c.style.window, width, phone), c.gap)


def _bar_icons(c: _Canvas, x: float, y_mid: float, count: int, container: str, backdrop: RGB, color: RGB,
               right: float) -> float:
    """A row of icon buttons from ``x`` (stopping before ``right``); returns where it ended."""
    for _ in range(count):
        if x + c.icon > right:
            break
        x += c.icon_button(x, y_mid - c.icon / 2, c.pick_glyph(container), container, backdrop, color) + c.gap
    return x


def _title_bar(c: _Canvas, box: Box, title: str, container: str) -> None:
    s, (x1, y1, x2, y2) = c.style, box
    c.fill(box, s.bar)
    c.write(x1 + c.pad, (y1 + y2) / 2, title, s.bar_text)
    x = x2 - c.pad - 3 * (c.icon + c.gap) if container == "title bar" else x2 - c.pad - c.icon - c.gap
    controls = ("minus", "maximize", "close") if container == "title bar" else ("close",)
    for glyph in controls:
        x += c.icon_button(x, (y1 + y2 - c.icon) / 2, glyph, container, s.bar, s.bar_text) + c.gap


def _dropdown(c: _Canvas, x: float, y: float) -> None:
    s, labels = c.style, [c.pick("button") for _ in range(c.rng.randint(3, 7))]
    width = max(c.text_width(t) for t in labels) + 2 * c.pad + c.font_px * 4
    box = (x, y, min(c.size[0], x + width), min(c.size[1], y + len(labels) * c.row + 2))
    c.cover(box)
    c.fill(box, s.window, s.border)
    highlight = c.rng.randrange(len(labels) + 1)
    for i, label in enumerate(labels):
        top = y + 1 + i * c.row
        if top + c.row > box[3]:
            break
        if i == highlight:
            c.fill((x + 1, top, box[2] - 1, top + c.row), s.accent)
        color = _readable_on(s.accent) if i == highlight else s.text
        c.write(x + c.pad, top + c.row / 2, label, color)
        c.add("menu item", label, (x + 1, top, box[2] - 1, top + c.row), "menu", s.window)


def _dialog(c: _Canvas, area: Box, difficulty: float) -> None:
    s, rng, (ax1, ay1, ax2, ay2) = c.style, c.rng, area
    w, h = (ax2 - ax1) * rng.uniform(0.4, 0.6), (ay2 - ay1) * rng.uniform(0.45, 0.65)
    x1, y1 = ax1 + rng.uniform(0.1, 0.9) * (ax2 - ax1 - w), ay1 + rng.uniform(0.1, 0.9) * (ay2 - ay1 - h)
    box = (round(x1), round(y1), round(x1 + w), round(y1 + h))
    c.cover(box)
    c.fill(box, s.window, s.border)
    _title_bar(c, (box[0] + 1, box[1] + 1, box[2] - 1, box[1] + 1 + c.bar), rng.choice(DIALOGS), "dialog")
    y_buttons = box[3] - c.row - c.pad
    x = box[2] - c.pad
    for label in ("Cancel", c.pick("button")):
        x -= c.text_width(label) + 2 * c.pad
        if x < box[0] + c.pad:
            break
        c.button(x, y_buttons, label, "dialog", s.window)
        x -= c.gap
    inner = (box[0] + c.pad, box[1] + c.bar + c.pad, box[2] - c.pad, y_buttons - c.gap)
    count = round(_lerp(1, 4, difficulty))
    flow(inner, _content_blocks(c, count, 0, "dialog", s.window, inner[2] - inner[0], False), c.gap)


def _desktop(c: _Canvas, difficulty: float, app: str) -> None:
    s, rng, (W, H) = c.style, c.rng, c.size
    taskbar = c.bar
    c.fill((0, H - taskbar, W, H), s.bar)
    _bar_icons(c, c.gap, H - taskbar / 2, rng.randint(3, 6), "taskbar", s.bar, s.bar_text, W * 0.7)
    c.write(W - c.text_width("12:45") - c.pad, H - taskbar / 2, "12:45", s.bar_text)
    m = rng.randint(0, W // 30)
    win = (m, m, W - m, H - taskbar - m)
    c.fill(win, s.window, s.border)
    _title_bar(c, (win[0] + 1, win[1] + 1, win[2] - 1, win[1] + 1 + c.bar), app, "title bar")
    y, left, right = win[1] + 1 + c.bar, win[0] + 1, win[2] - 1
    open_menu: Optional[Tuple[float, float]] = None
    if rng.random() < 0.8:
        x, opened = left + c.gap, rng.random() < 0.35
        labels = [c.pick("menu") for _ in range(rng.randint(3, 6))]
        chosen = rng.randrange(len(labels)) if opened else -1
        for i, label in enumerate(labels):
            if x + c.text_width(label) + 2 * c.pad > right - c.gap:
                break
            if i == chosen:
                open_menu = (x, y + 2 + c.row)
            x += c.text_cell("menu", x, y + 2, label, "menu bar", s.window, s.text, selected=i == chosen) + 2
        y += c.row + 4
    if rng.random() < 0.85:
        height = max(c.bar, c.row + c.gap)
        count = rng.randint(3, 4) + round(_lerp(0, 7, difficulty))
        end = _bar_icons(c, left + c.gap, y + height / 2, count, "toolbar", s.window, s.icon, right - c.gap)
        c.draw.line((left, y + height, right, y + height), fill=s.border)
        search_w = c.font_px * 10
        if rng.random() < 0.4 and right - c.gap - search_w > end + c.text_width("Search") + c.gap:
            c.field(right - c.gap - search_w - c.text_width("Search") - c.gap, y + (height - c.row) / 2,
                    "Search", "toolbar", s.window, search_w, False)
        y += height + 1
    if rng.random() < 0.5:
        x, selected = left + c.gap, rng.randrange(4)
        for i in range(rng.randint(2, 5)):
            label = c.pick("tab")
            if x + c.text_width(label) + 2 * c.pad > right - c.gap:
                break
            x += c.text_cell("tab", x, y + 2, label, "tab bar", s.window, s.text, selected=i == selected) + c.gap
        y += c.row + 4
    bottom = win[3] - 1
    if rng.random() < 0.5:
        bottom -= c.row
        c.fill((left, bottom, right, win[3] - 1), s.bar)
        c.write(left + c.pad, bottom + c.row / 2, f"Ln {rng.randint(1, 300)}, Col {rng.randint(1, 80)}", s.bar_text, 0.9)
    if rng.random() < 0.6 and right - left > c.font_px * 30:
        side = round((right - left) * rng.uniform(0.16, 0.24))
        c.fill((left, y, left + side, bottom), s.bar)
        rows = int((bottom - y - c.gap) // c.row)
        labels = [c.pick("list") for _ in range(max(0, min(rows, rng.randint(3, 8))))]
        if labels:
            c.list_items(left, y + c.gap, side, labels, "sidebar", s.bar, rng.random() < 0.6, s.bar_text)
        left += side
    _fill_panel(c, (left + c.pad, y + c.pad, right - c.pad, bottom - c.pad), "main panel", difficulty)
    if open_menu is not None:
        _dropdown(c, *open_menu)
    elif rng.random() < _lerp(0.1, 0.5, difficulty):
        _dialog(c, (win[0], win[1] + c.bar, win[2], win[3]), difficulty)


def _web(c: _Canvas, difficulty: float, site: str) -> None:
    s, rng, (W, H) = c.style, c.rng, c.size
    c.fill((0, 0, W, H), s.window)
    nav = round(c.row * 1.5)
    c.fill((0, 0, W, nav), s.bar)
    ink = c.write(c.pad * 2, nav / 2, site, s.bar_text, 1.3)
    icons = rng.randint(1, 3)
    right = W - c.pad - icons * (c.icon + c.gap)
    x = ink[2] + 3 * c.gap
    for _ in range(rng.randint(2, 6)):
        label = c.pick("link")
        if x + c.text_width(label) + 2 * c.pad > right - c.gap:
            break
        x += c.text_cell("link", x, (nav - c.row) / 2, label, "navigation bar", s.bar, s.bar_text) + c.gap
    _bar_icons(c, right, nav / 2, icons, "navigation bar", s.bar, s.bar_text, W)
    top, bottom, left = nav + c.pad, H, 0
    if rng.random() < 0.6:
        bottom = H - c.row - 2 * c.pad
        c.fill((0, bottom, W, H), s.bar)
        x = c.pad * 2
        for _ in range(rng.randint(2, 5)):
            label = c.pick("link")
            if x + c.text_width(label) + 2 * c.pad > W - c.pad:
                break
            x += c.text_cell("link", x, bottom + c.pad, label, "footer", s.bar, s.bar_text) + c.gap
    if rng.random() < 0.4 and W > c.font_px * 40:
        side = round(W * rng.uniform(0.15, 0.22))
        shade, ink = (s.field, s.text) if s.field != s.window else (s.bar, s.bar_text)
        c.fill((0, nav, side, bottom), shade)
        rows = int((bottom - top) // c.row)
        labels = [c.pick("list") for _ in range(max(0, min(rows, rng.randint(3, 7))))]
        if labels:
            c.list_items(0, top, side, labels, "sidebar", shade, False, ink)
        left = side
    y = top
    if rng.random() < 0.6:
        ink = c.write(left + c.pad * 2, y + c.font_px, rng.choice(("Welcome back", "Get started", "Your account")),
                      s.text, 1.6)
        y = ink[3] + c.pad
    _fill_panel(c, (left + c.pad * 2, y, W - c.pad * 2, bottom - c.pad), "page", difficulty)
    if rng.random() < _lerp(0.05, 0.35, difficulty):
        _dialog(c, (0, nav, W, bottom), difficulty)


def _phone(c: _Canvas, difficulty: float, app: str) -> None:
    s, rng, (W, H) = c.style, c.rng, c.size
    c.fill((0, 0, W, H), s.window)
    status = round(c.font_px * 1.8)
    c.fill((0, 0, W, status), s.bar)
    c.write(c.pad, status / 2, "9:41", s.bar_text, 0.9)
    c.fill((W - c.pad - c.font_px * 2, status * 0.3, W - c.pad, status * 0.7), s.bar_text)
    app_bar = round(c.row * 1.4)
    c.fill((0, status, W, status + app_bar), s.bar)
    mid = status + app_bar / 2
    x = c.pad + c.icon_button(c.pad, mid - c.icon / 2, rng.choice(("menu", "back")), "app bar", s.bar, s.bar_text)
    c.write(x + c.gap, mid, app, s.bar_text, 1.2)
    trailing = rng.randint(1, 3)
    _bar_icons(c, W - c.pad - trailing * (c.icon + c.gap) + c.gap, mid, trailing, "app bar", s.bar, s.bar_text, W)
    y = status + app_bar
    nav = round(c.icon * 1.6)
    c.fill((0, H - nav, W, H), s.bar)
    glyphs = rng.randint(3, 5)
    step = W / glyphs
    for i in range(glyphs):
        c.icon_button(i * step + (step - c.icon) / 2, H - nav + (nav - c.icon) / 2, c.pick_glyph("navigation bar"),
                      "navigation bar", s.bar, s.bar_text)
    if rng.random() < 0.4:
        x, selected = c.gap, rng.randrange(3)
        for i in range(rng.randint(2, 4)):
            label = c.pick("tab")
            if x + c.text_width(label) + 2 * c.pad > W - c.gap:
                break
            x += c.text_cell("tab", x, y + 2, label, "tab bar", s.window, s.text, selected=i == selected) + c.gap
        y += c.row + 4
    _fill_panel(c, (c.pad * 2, y + c.pad, W - c.pad * 2, H - nav - c.pad), "screen", difficulty, phone=True)


def _instructions(elements: Sequence[Element]) -> List[Tuple[Element, bool]]:
    """Elements an instruction can single out, and whether it must name the container to do so."""
    by_label = Counter((e.kind, e.label) for e in elements)
    by_container = Counter((e.kind, e.label, e.container) for e in elements)
    out = []
    for e in elements:
        if by_label[(e.kind, e.label)] == 1:
            out.append((e, False))
        elif by_container[(e.kind, e.label, e.container)] == 1:
            out.append((e, True))
    return out


class ScreenGenerator:
    """Draws screens and their grounding samples, each fully determined by an integer seed.

    Args:
        difficulty: 0..1; more elements and clutter, smaller elements, more look-alike labels.
        size: ``(W, H)`` for every screen; default: a size of the seed's layout (``LAYOUTS``).
        layouts: which of ``LAYOUTS`` the seed chooses from.
        styles: which of ``STYLES`` the seed chooses from.
        samples_per_screen: how many targets (distinct elements) one screen yields at most.
    """

    def __init__(self, difficulty: float = 0.5, size: Optional[Sequence[int]] = None,
                 layouts: Sequence[str] = tuple(LAYOUTS), styles: Sequence[str] = tuple(STYLES),
                 samples_per_screen: int = 4) -> None:
        if not 0.0 <= difficulty <= 1.0:
            raise ConfigError(f"gui screens: difficulty must lie in [0, 1], got {difficulty}")
        if size is not None and (len(size) != 2 or min(size) < 96):
            raise ConfigError(f"gui screens: size must be [W, H] with both >= 96 pixels, got {size}")
        for name, given, known in (("layout", layouts, LAYOUTS), ("style", styles, STYLES)):
            unknown = [g for g in given if g not in known] or ([] if given else ["(none)"])
            if unknown:
                raise ConfigError(f"gui screens: unknown {name} {unknown[0]}; valid choices: {', '.join(known)}")
        if samples_per_screen < 1:
            raise ConfigError(f"gui screens: samples_per_screen must be >= 1, got {samples_per_screen}")
        self.difficulty, self.samples_per_screen = difficulty, samples_per_screen
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.layouts, self.styles = tuple(layouts), tuple(styles)

    def screen(self, seed: int) -> Screen:
        """Draw the screen of ``seed`` and choose its targets and instructions."""
        rng = random.Random(seed)
        layout, style = rng.choice(self.layouts), STYLES[rng.choice(self.styles)]
        platform, sizes = LAYOUTS[layout]
        size = self.size or rng.choice(sizes)
        d = self.difficulty
        base = size[0] / 26 if layout == "phone" else size[1] / 58
        font_px = max(6, round(max(9.0, base) * _lerp(1.3, 0.75, d) * rng.uniform(0.92, 1.08)))
        canvas = _Canvas(size, style, font_px, rng, similar=_lerp(0.0, 0.8, d))
        app = rng.choice(SITES if layout == "web" else APPLICATIONS)
        {"desktop": _desktop, "web": _web, "phone": _phone}[layout](canvas, d, app)
        screen = Screen(canvas.image, canvas.elements, layout, platform, style.name, app, seed, d)
        candidates = _instructions(canvas.elements)
        verb = "tap" if platform == "mobile" else "click"
        for element, qualify in rng.sample(candidates, min(self.samples_per_screen, len(candidates))):
            text = rng.choice(TEMPLATES[element.kind]).format(verb=verb, label=element.name)
            screen.targets.append((element, text + (f" in the {element.container}" if qualify else "")))
        return screen

    def samples(self, seed: int) -> List[Dict[str, Any]]:
        """The grounding samples of the screen of ``seed`` (they share one PIL image)."""
        screen = self.screen(seed)
        return [
            {"image": screen.image, "instruction": instruction, "bbox": list(element.box),
             "image_size": list(screen.image.size), "data_type": element.data_type, "platform": screen.platform,
             "source": "procedural", "application": screen.application, "action": "click",
             "id": f"procedural-{seed}-{screen.elements.index(element)}"}
            for element, instruction in screen.targets
        ]


def save_preview(samples: Sequence[Dict[str, Any]], path: str, tile_width: int = 480, columns: int = 3) -> str:
    """A contact sheet: each screen shrunk to ``tile_width`` with its target boxes and numbered
    instructions drawn in matching colours, so a person can check boxes against instructions."""
    colors = ((230, 25, 75), (60, 180, 75), (255, 140, 0), (145, 30, 180), (0, 130, 200), (240, 50, 230))
    screens: Dict[int, Tuple[Image.Image, List[Dict[str, Any]]]] = {}
    for sample in samples:
        image = sample.get("image") or Image.open(sample["image_path"]).convert("RGB")
        screens.setdefault(id(image), (image, []))[1].append(sample)
    font, line = _font(12), 16
    tiles = []
    for image, group in screens.values():
        scale = tile_width / image.width
        tile = Image.new("RGB", (tile_width, round(image.height * scale) + line * len(group) + 4), (255, 255, 255))
        tile.paste(image.resize((tile_width, round(image.height * scale))), (0, 0))
        draw = ImageDraw.Draw(tile)
        for i, sample in enumerate(group):
            color = colors[i % len(colors)]
            draw.rectangle([v * scale for v in sample["bbox"]], outline=color, width=2)
            draw.text((4, round(image.height * scale) + 2 + i * line), f"{i + 1}. {sample['instruction']}"
                      f" [{sample['data_type']}]", fill=color, font=font)
        tiles.append(tile)
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    heights = [max(t.height for t in row) for row in rows]
    sheet = Image.new("RGB", (columns * (tile_width + 8), sum(heights) + 8 * len(rows)), (200, 200, 200))
    y = 0
    for row, height in zip(rows, heights):
        for j, tile in enumerate(row):
            sheet.paste(tile, (j * (tile_width + 8), y))
        y += height + 8
    sheet.save(path)
    return path
