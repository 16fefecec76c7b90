"""Procedural GUI screens: determinism, boxes where the pixels are, unique instructions, the
difficulty knob, variety of styles and resolutions, and the sample contract."""
import math
from collections import Counter

import numpy as np
import pytest

from envs.gui.screens import LAYOUTS, POOLS, STYLES, ScreenGenerator, save_preview
from workbench.registry import ConfigError

SMALL = (320, 200)
STACKED = {"list item", "menu item"}  # rows that touch their neighbours: no clean ring around them


def _screens(difficulty, seeds=range(8), size=SMALL):
    gen = ScreenGenerator(difficulty=difficulty, size=size)
    return [gen.screen(seed) for seed in seeds]


def test_same_seed_draws_the_same_screen_and_samples():
    a, b = ScreenGenerator(0.6, size=SMALL), ScreenGenerator(0.6, size=SMALL)
    first, again, other = a.samples(3), b.samples(3), a.samples(4)
    assert [(s["instruction"], s["bbox"]) for s in first] == [(s["instruction"], s["bbox"]) for s in again]
    assert first[0]["image"].tobytes() == again[0]["image"].tobytes()
    assert first[0]["image"].tobytes() != other[0]["image"].tobytes()


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_every_target_box_is_inside_the_image_and_covers_what_was_drawn(difficulty):
    checked = 0
    for screen in _screens(difficulty):
        pixels = np.asarray(screen.image).astype(int)
        height, width = pixels.shape[:2]
        for element, _ in screen.targets:
            x1, y1, x2, y2 = element.box
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, element
            ink = np.any(pixels != np.array(element.backdrop), axis=-1)  # [H, W] differs from what it sits on
            c1, r1, c2, r2 = math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)
            inside = ink[r1:r2, c1:c2]
            cols, rows = np.flatnonzero(inside.any(axis=0)), np.flatnonzero(inside.any(axis=1))
            assert cols.size and rows.size, element
            span = ((cols[-1] - cols[0] + 1) / (c2 - c1), (rows[-1] - rows[0] + 1) / (r2 - r1))
            # the ink fills the box along one axis at least ("minus" is flat; a menu row is mostly empty)
            assert max(span) >= (0.25 if element.kind in STACKED else 0.4), element
            if element.kind not in STACKED:  # nothing drawn 2 px outside: the box is not offset or too small
                ring = np.zeros_like(ink)
                ring[max(0, r1 - 2):r2 + 2, max(0, c1 - 2):c2 + 2] = True
                ring[max(0, r1 - 1):r2 + 1, max(0, c1 - 1):c2 + 1] = False
                assert not (ink & ring).any(), element
            checked += 1
    assert checked >= 20


def test_instruction_names_its_target_uniquely():
    for difficulty in (0.0, 1.0):
        for screen in _screens(difficulty):
            same_label = Counter((e.kind, e.label) for e in screen.elements)
            same_place = Counter((e.kind, e.label, e.container) for e in screen.elements)
            for element, instruction in screen.targets:
                assert element.name in instruction
                if same_label[(element.kind, element.label)] > 1:  # only the container tells them apart
                    assert instruction.endswith(f" in the {element.container}")
                    assert same_place[(element.kind, element.label, element.container)] == 1


def test_difficulty_adds_elements_shrinks_them_and_adds_lookalike_labels():
    def family_pairs(screen):
        family = {label: (pool, i) for pool, fams in POOLS.items() for i, fam in enumerate(fams) for label in fam}
        labels = {(e.kind, e.label) for e in screen.elements}
        return sum(1 for k, a in labels for k2, b in labels
                   if k == k2 and a < b and family.get(a, a) == family.get(b, b))

    easy, hard = _screens(0.0, range(12)), _screens(1.0, range(12))
    count = [np.mean([len(s.elements) for s in group]) for group in (easy, hard)]
    height = [np.median([e.box[3] - e.box[1] for s in group for e in s.elements]) for group in (easy, hard)]
    lookalike = [sum(family_pairs(s) for s in group) for group in (easy, hard)]
    assert count[1] > 1.3 * count[0]
    assert height[1] < 0.8 * height[0]
    assert lookalike[1] > lookalike[0] + 5


def test_seeds_vary_layout_style_and_resolution():
    screens = [ScreenGenerator(0.3).screen(seed) for seed in range(12)]
    assert len({s.layout for s in screens}) == len(LAYOUTS)
    assert len({s.style for s in screens}) >= 3
    assert len({s.image.size for s in screens}) >= 4
    for s in screens:
        assert s.image.size in LAYOUTS[s.layout][1] and s.platform == LAYOUTS[s.layout][0]
    phone = ScreenGenerator(0.3, layouts=["phone"], styles=["dark"]).screen(0)
    assert phone.image.width < phone.image.height and phone.style == "dark"


def test_samples_follow_the_grounding_contract():
    samples = [s for seed in range(4) for s in ScreenGenerator(0.5, size=SMALL, samples_per_screen=3).samples(seed)]
    assert len(samples) == 12
    for s in samples:
        assert s["image"].mode == "RGB" and s["image_size"] == [*s["image"].size]
        x1, y1, x2, y2 = s["bbox"]
        assert all(isinstance(v, float) for v in s["bbox"]) and x1 < x2 and y1 < y2
        assert s["data_type"] in ("text", "icon") and s["source"] == "procedural" and s["action"] == "click"
        assert s["platform"] in {platform for platform, _ in LAYOUTS.values()}
        assert ("icon" in s["instruction"]) == (s["data_type"] == "icon")
    assert len({s["id"] for s in samples}) == len(samples)
    assert {s["data_type"] for s in samples} == {"text", "icon"}


def test_bad_options_fail_with_one_line():
    for kwargs in ({"difficulty": 1.5}, {"size": (50, 40)}, {"layouts": ["tablet"]}, {"styles": []},
                   {"samples_per_screen": 0}):
        with pytest.raises(ConfigError) as err:
            ScreenGenerator(**kwargs)
        assert "\n" not in str(err.value)
    assert set(STYLES) >= {"light", "dark", "flat", "bordered"}


def test_save_preview_writes_one_sheet(tmp_path):
    gen = ScreenGenerator(0.5, size=SMALL)
    path = save_preview([s for seed in range(4) for s in gen.samples(seed)], str(tmp_path / "p.png"), tile_width=160)
    from PIL import Image

    with Image.open(path) as sheet:
        assert sheet.width == 3 * (160 + 8) and sheet.height > 200
