"""GUI grounding: parsing, coordinate conventions, the five rewards and GUI-RC voting."""
import sys

import numpy as np
import pytest

from workbench.registry import ConfigError
from workbench.rewards import RewardPipeline, build_reward
from workbench.rewards.gui import from_original, parse_action, parse_prediction, region_vote, smart_resize, to_original
from workbench.rewards.gui import vote as vote_module
from workbench.rewards.gui.parse import JSON_FENCE
from workbench.rewards.gui.rewards import box_closeness, btl_format
from workbench.rewards.gui.vote import pixel_boxes, region_densities

SIZES = [(1366, 768), (333, 517), (4000, 3000), (30, 20), (1920, 1080)]  # [W, H]

# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("[10, 20, 30, 40]", (10, 20, 30, 40)),
    ("The button is at (5.5, 6).", (5.5, 6)),
    ("first [1, 2] then (3, 4, 5, 6)", (3, 4, 5, 6)),  # the last match
    ('{"point_2d": [-12, 7]}', (-12, 7)),
    ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "Save (9, 9)"}]\n```', (1, 2, 3, 4)),  # keyed beats bare
    ("<think>maybe [1, 2, 3, 4]</think><answer>(7, 8)</answer>", (7, 8)),  # answer tag preferred
    ("<answer></answer><answer>[1,2,3,4]</answer>", (1, 2, 3, 4)),  # last non-empty answer
    ("[{'action': 'click', 'coordinate': [100, 200]}]", (100, 200)),  # UI-R1 / GUI-R1 python dict
])
def test_parse_prediction_reads_every_convention(text, expected):
    assert parse_prediction(text) == tuple(float(v) for v in expected)


@pytest.mark.parametrize("text", [
    "I cannot find it.", "[1, 2, 3]", "[1, 2, 3, 4, 5]", "<think>[1, 2, 3, 4]</think><answer>the Save button</answer>",
    "<answer> </answer>", "[" + "9" * 400 + ", 1]",  # a number too large to be finite
])
def test_parse_prediction_unparseable_is_none(text):
    assert parse_prediction(text) is None


def test_json_fence_regex_matches_a_real_fence_not_btl_uis_typo():
    assert JSON_FENCE.search('```json\n[{"point_2d": [1, 2]}]\n```').group(1).strip() == '[{"point_2d": [1, 2]}]'
    assert JSON_FENCE.search('```JSON [1]```') is not None
    assert JSON_FENCE.search('```js\u00b7on\n[{"point_2d": [1, 2]}]\n```') is None  # BTL-UI's released regex text


def test_parse_action():
    assert parse_action("<answer>[{'action': 'Scroll', 'direction': 'up'}]</answer>") == "scroll"
    assert parse_action('{"action_type": "type", "text": "hi"}') == "type"
    assert parse_action("(3, 4)") == "click"  # a bare grounding answer is a click
    assert parse_action("no idea") is None


# -- coordinates ------------------------------------------------------------------------------


def test_smart_resize_matches_qwen_vl_utils():
    qwen = pytest.importorskip("qwen_vl_utils.vision_process")
    for w, h in SIZES + [(28, 5000), (3840, 2160), (56, 56)]:
        for lo, hi in [(3136, 12845056), (3136, 200_000), (100_000, 1_003_520)]:
            assert smart_resize(h, w, 28, lo, hi) == qwen.smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)


def test_abs_resized_maps_back_exactly_by_hand():
    # 1366x768 -> smart_resize -> 1372x756: the aspect ratio changes, x and y scale differently
    assert smart_resize(768, 1366) == (756, 1372)
    assert to_original([686, 378], "abs_resized", [1366, 768]) == (683.0, 384.0)
    assert to_original([500, 250], "norm1000", [1366, 768]) == (683.0, 192.0)
    assert to_original([0.5, 0.25, 1, 1], "norm1", [1366, 768]) == (683.0, 192.0, 1366.0, 768.0)
    assert to_original([1.5, 2.25], "abs", [10, 10]) == (1.5, 2.25)


@pytest.mark.parametrize("convention", ["abs", "abs_resized", "norm1000", "norm1"])
@pytest.mark.parametrize("max_pixels", [12845056, 50_000])  # 50k forces a downscale of every size but 30x20
def test_round_trip_original_to_model_and_back(convention, max_pixels):
    for w, h in SIZES:
        for values in ([0, 0, w, h], [w / 3, h / 7, w - 1, h - 0.5], [w / 2, h / 2]):
            model = from_original(values, convention, [w, h], max_pixels=max_pixels)
            back = to_original(model, convention, [w, h], max_pixels=max_pixels)
            assert back == pytest.approx(values, rel=0, abs=1e-9)
    if convention == "abs_resized" and max_pixels == 50_000:
        h_bar, w_bar = smart_resize(3000, 4000, max_pixels=50_000)
        assert from_original([4000, 3000], convention, [4000, 3000], max_pixels=50_000) == pytest.approx((w_bar, h_bar))


def test_bad_coordinate_options_are_config_errors():
    with pytest.raises(ConfigError, match="coord_convention='pixels' is not valid; valid choices: abs, abs_resized"):
        build_reward("gui_click", coord_convention="pixels")
    with pytest.raises(ConfigError, match="needs option"):
        build_reward("gui_g1")
    with pytest.raises(ConfigError, match="min_pixels <= max_pixels"):
        build_reward("gui_click", coord_convention="abs_resized", min_pixels=10, max_pixels=5)
    with pytest.raises(ValueError, match="2 numbers and a box 4"):
        to_original([1, 2, 3], "abs", [10, 10])


# -- gui_click and gui_action_type ------------------------------------------------------------

BOX, SIZE = [100, 100, 200, 150], [1366, 768]


def _click(texts, convention="abs", **options):
    fn = build_reward("gui_click", coord_convention=convention, **options)
    return fn(texts, bbox=[BOX] * len(texts), image_size=[SIZE] * len(texts))


def test_gui_click_points_boxes_edges_and_unparsed():
    texts = ["(150, 120)", "[90, 90, 210, 160]", "(100, 150)", "(99.9, 120)", "(-5, 2000)", "nothing",
             "[210, 160, 90, 90]", "[150, 100, 150, 150]", [{"role": "assistant", "content": "(150, 125)"}]]
    out = _click(texts)
    # centre of a box; edges inside; outside; off-image point; unparsed; inverted box (= unparsed);
    # zero-width box (valid: its centre is used); a chat-format completion
    assert out["score"] == [1, 1, 1, 0, 0, 0, 0, 1, 1]
    assert out["unparsed"] == [0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert _click(["(100, 150)", "(150, 120)"], strict=True)["score"] == [0, 1]  # GUI-R1: edges excluded


def test_gui_click_norm1000_and_abs_resized_agree_on_the_same_pixel():
    # pixel (150, 120) of 1366x768: in norm1000 and in the 1372x756 resized frame
    norm = from_original([150, 120], "norm1000", SIZE)
    resized = from_original([150, 120], "abs_resized", SIZE)
    assert _click([f"({norm[0]:.6f}, {norm[1]:.6f})"], "norm1000")["score"] == [1]
    assert _click([f"({resized[0]:.6f}, {resized[1]:.6f})"], "abs_resized")["score"] == [1]
    # the same numbers in another convention land elsewhere: (110, 156) in norm1000 is pixel
    # (150.26, 119.81), inside; as pixels it is below the box
    assert _click(["(110, 156)"], "norm1000")["score"] == [1]
    assert _click(["(110, 156)"], "abs")["score"] == [0]
    # (200.5, 147) in the 1372x756 frame is pixel (199.62, 149.33), inside; as pixels x > 200
    assert _click(["(200.5, 147)"], "abs_resized")["score"] == [1]
    assert _click(["(200.5, 147)"], "abs")["score"] == [0]


def test_gui_click_missing_column_names_it():
    fn = build_reward("gui_click", coord_convention="abs")
    with pytest.raises(ValueError, match="needs the per-sample column 'bbox'"):
        fn(["(1, 2)"], image_size=[SIZE])


def test_gui_action_type():
    fn = build_reward("gui_action_type")
    texts = ["<answer>[{'action': 'click', 'coordinate': [1, 2]}]</answer>", "[1, 2]", "{'action': 'scroll'}",
             "{'action': 'Type'}", "???"]
    out = fn(texts, action=["click", None, "click", "type", "click"])
    assert out["score"] == [1, 1, 0, 1, 0]
    assert out["unparsed"] == [0, 0, 0, 0, 1]
    assert fn(["[1, 2]"])["score"] == [1]  # no action column: click expected


# -- gui_g1 -----------------------------------------------------------------------------------


def test_gui_g1_by_hand():
    fn = build_reward("gui_g1", coord_convention="abs")
    gt, size = [100, 100, 200, 200], [1000, 500]
    texts = ['[{"bbox_2d": [110, 120, 210, 220]}]', "(150, 150)", "[900, 400, 1000, 500]", "[5000, 0, 6000, 10]", "no"]
    out = fn(texts, bbox=[gt] * 5, image_size=[size] * 5, rate=[2.0, None, 1.0, 1.0, 1.0])
    # box 1: centre (160, 170) hits; IoU 90*80 / (2*100^2 - 7200) = 0.5625;
    # closeness = HM(0.99, 0.99, 0.96, 0.96) = 4 / (2/0.99 + 2/0.96); weight 2
    closeness = 4 / (2 / 0.99 + 2 / 0.96)
    assert out["iou"][0] == pytest.approx(0.5625)
    assert out["box"][0] == pytest.approx(closeness)
    assert out["score"][0] == pytest.approx(2 * (1 + 0.25 * 0.5625 + 0.125 * closeness))
    assert out["score"][1] == 1.0 and out["iou"][1] == 0.0  # a point earns the hit only; None weight = 1
    far = box_closeness([900, 400, 1000, 500], gt, size)  # 1-800/1000, 1-800/1000, 1-300/500, 1-300/500
    assert far == pytest.approx(4 / (2 / 0.2 + 2 / 0.4))
    assert out["score"][2] == pytest.approx(0.125 * far) and out["hit"][2] == 0.0
    assert out["box"][3] == 0.0  # a corner more than an image width away clips a term to 0
    assert out["score"][4] == 0.0 and out["unparsed"] == [0, 0, 0, 0, 1]
    unweighted = build_reward("gui_g1", coord_convention="abs", difficulty_column=None)
    assert unweighted(texts[:1], bbox=[gt], image_size=[size], rate=[2.0])["score"][0] == pytest.approx(out["score"][0] / 2)


# -- btl_ui -----------------------------------------------------------------------------------


def _btl(blink, point, fence="json"):
    blink_json = ", ".join(f'{{"bbox_2d": {b}, "label": "x"}}' for b in blink)
    return (f"<blink>```json\n[{blink_json}]\n```</blink>\n<think>the Save button</think>\n"
            f"<link>```{fence}\n[{{\"point_2d\": {point}}}]\n```</link>")


def test_btl_ui_components():
    fn = build_reward("btl_ui", coord_convention="abs")
    texts = [
        _btl([[95, 95, 205, 155], [300, 300, 400, 400]], [150, 120]),  # all good
        _btl([[95, 95, 205, 155], [96, 96, 206, 156]], [150, 120]),  # duplicate blink boxes: NMS drops one
        _btl([[300, 300, 400, 400]], [100, 120]),  # blink misses; point on the edge (strict: outside)
        _btl([[95, 95, 205, 155]], [150, 120], fence="js\u00b7on"),  # BTL-UI's typo: no fence, no format, no point
        "(150, 120)",  # not BTL format at all
    ]
    out = fn(texts, bbox=[BOX] * 5, image_size=[SIZE] * 5)
    assert out["format"] == [1, 1, 1, 0, 0]
    assert out["blink"] == [1, 0, 0, 1, 0]
    assert out["accuracy"] == [1, 1, 0, 0, 0]
    assert out["unparsed"] == [0, 0, 0, 1, 1]
    assert out["score"] == pytest.approx([1.0, 0.7, 0.1, 0.3, 0.0])
    no_target = fn([texts[2]], bbox=[None], image_size=[SIZE])
    assert no_target["blink"] == [1] and no_target["accuracy"] == [0]


def test_btl_format_needs_order_and_one_link_item():
    good = _btl([[1, 2, 3, 4]], [2, 3])
    assert btl_format(good) == 1.0
    assert btl_format(good.replace('[{"point_2d": [2, 3]}]', '[{"point_2d": [2, 3]}, {"point_2d": [2, 3]}]')) == 0.0
    assert btl_format("<think>x</think>" + good) == 0.0
    assert btl_format(good.replace('"label": "x"}]', '"label": "x"')) == 0.0  # blink JSON does not parse
    plan = good.replace('{"point_2d": [2, 3]}', '{"Plan": "tap", "Action": {"function": "Home"}}')
    assert btl_format(plan) == 1.0


# -- GUI-RCPO region consistency --------------------------------------------------------------


def test_region_densities_by_hand():
    # A = B = [0,0,10,10], C = [5,5,15,15]: 3 votes on [5,10)^2 (25 px), 2 on the rest of A, 1 on the rest of C
    boxes = pixel_boxes([(0, 0, 10, 10), (0, 0, 10, 10), (5, 5, 15, 15), None], [100, 100])
    assert region_densities(boxes) == pytest.approx([(25 * 3 + 75 * 2) / 300, (25 * 3 + 75 * 2) / 300,
                                                    (25 * 3 + 75 * 1) / 300, 0.0])


def test_gui_region_consistency_groups_clips_points_and_counts_unparsed():
    fn = build_reward("gui_region_consistency", coord_convention="abs")
    rollouts = [("a", "[0, 0, 10, 10]"), ("b", "(20, 20)"), ("a", "[5, 5, 15, 15]"), ("a", "garbage"),
                ("b", "[-50, -50, 45, 45]"), ("a", "[0, 0, 10.9, 10.9]"), ("b", "[200, 200, 300, 300]")]
    ids, texts = zip(*rollouts)  # the groups interleave, as rollouts of several prompts may
    out = fn(list(texts), group_id=list(ids), image_size=[[100, 100]] * 7)
    # group a: [0,0,10,10] twice (10.9 truncates to 10), [5,5,15,15] and garbage: as by hand above
    assert [out["score"][i] for i in (0, 5, 2, 3)] == pytest.approx([0.75, 0.75, 0.5, 0.0])
    # group b: the point's [-5,-5,45,45] and [-50,-50,45,45] both clip to [0,0,45,45]; [200,..] is off the image
    assert [out["score"][i] for i in (1, 4, 6)] == [1.0, 1.0, 0.0]
    assert out["unparsed"] == [0, 0, 0, 1, 0, 0, 0]


def test_gui_region_consistency_bad_groups_fail_in_the_pipeline():
    pipe = RewardPipeline([{"name": "gui_region_consistency", "coord_convention": "abs"}], failure_score=-1.0)
    res = pipe(["[0, 0, 5, 5]", "[0, 0, 5, 5]", "[1, 1, 2, 2]"], group_id=["a", "a", None],
               image_size=[[10, 10], [20, 10], [10, 10]])
    assert res.scores == [-1.0, -1.0, -1.0]  # mixed image sizes in group a; no id for the third
    assert res.failures["gui_region_consistency"] == 3
    with pytest.raises(ValueError, match="point_expand"):
        build_reward("gui_region_consistency", coord_convention="abs", point_expand=-1)


def test_pipeline_logs_unparsed_share():
    pipe = RewardPipeline([{"name": "gui_click", "coord_convention": "norm1000"}])
    res = pipe(["(500, 500)", "none"], bbox=[[0, 0, 1000, 1000]] * 2, image_size=[[1000, 1000]] * 2)
    assert res.scores == [1.0, 0.0]
    assert res.metrics()["reward/gui_click/unparsed"] == 0.5


# -- GUI-RC test-time voting ------------------------------------------------------------------


def test_region_vote_picks_the_largest_max_vote_component():
    outputs = [(0, 0, 10, 10), (0, 0, 10, 10),  # 2 votes on 100 px
               (50, 50, 70, 60), (50, 50, 70, 60),  # 2 votes on 200 px: the larger component wins
               (90, 20), None]  # a point votes once for [65,-5,115,45] clipped to [65,0,100,45]
    point, box = region_vote(outputs, [100, 100])
    assert box == (50, 50, 70, 60) and point == (60.0, 55.0)
    point, box = region_vote(outputs + [(80, 80)], [100, 100])  # [55,55,100,100] adds a 3rd vote on 15x5 px
    assert box == (55, 55, 70, 60) and point == (62.5, 57.5)
    point, box = region_vote([(30, 40)], [100, 100], point_expand=10)
    assert box == (25, 35, 35, 45) and point == (30.0, 40.0)
    assert region_vote([None, (500, 500, 600, 600)], [100, 100]) == (None, None)


def test_region_vote_bfs_fallback_matches_scipy(monkeypatch):
    pytest.importorskip("scipy")
    mask = np.random.default_rng(0).random((30, 40)) > 0.55
    labels, n = vote_module._components(mask)
    bfs_labels, bfs_n = vote_module._bfs_components(mask)
    assert n == bfs_n > 1 and np.array_equal(labels, bfs_labels)
    outputs = [(0, 0, 10, 10), (0, 0, 10, 10), (50, 50, 70, 60), (50, 50, 70, 60), (80, 80)]
    with_scipy = region_vote(outputs, [100, 100])
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)  # import fails: the BFS runs
    assert region_vote(outputs, [100, 100]) == with_scipy
