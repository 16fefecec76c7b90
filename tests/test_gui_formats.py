"""The ScreenSpot-family loaders on tiny files written here in each format: boxes in original
pixels against hand-computed values, the platform / data_type mapping, limit, laziness, and the
one-line error for each kind of malformed sample."""
import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from envs.gui.formats import detect_format, load_grounding, load_image
from workbench.registry import ConfigError


def _png(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def _png_bytes(size):
    buffer = io.BytesIO()
    Image.new("RGB", size, (0, 90, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _json(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


def _seeclick_row(**over):
    row = {"img_filename": "a.png", "bbox": [2, 3, 4, 5], "instruction": "click save",
           "data_type": "text", "data_source": "ios"}
    row.update(over)
    return row


def _pro_row(**over):
    row = {"img_filename": "vscode/a.png", "bbox": [10, 5, 30, 25], "img_size": [40, 30],
           "instruction": "open the terminal", "ui_type": "icon", "platform": "macos",
           "application": "vscode", "id": "vscode_0", "gt_type": "positive"}
    row.update(over)
    return row


def test_screenspot_xywh_becomes_xyxy_and_data_source_maps_to_platform(tmp_path):
    _png(tmp_path / "a.png", (40, 30))
    _png(tmp_path / "b.png", (64, 48))
    rows = [_seeclick_row(), _seeclick_row(img_filename="b.png", bbox=[60, 40, 4, 8], data_type="icon",
                                           data_source="windows"),
            _seeclick_row(data_source="gitlab", bbox=[0.5, 1.25, 10, 2.5])]
    path = _json(tmp_path / "test.json", rows)
    assert detect_format(path) == "screenspot"
    samples = list(load_grounding(path))
    assert [s["bbox"] for s in samples] == [[2.0, 3.0, 6.0, 8.0], [60.0, 40.0, 64.0, 48.0], [0.5, 1.25, 10.5, 3.75]]
    assert [s["image_size"] for s in samples] == [[40, 30], [64, 48], [40, 30]]
    assert [s["platform"] for s in samples] == ["mobile", "desktop", "web"]
    assert [s["data_type"] for s in samples] == ["text", "icon", "text"]
    assert samples[0]["image_path"] == str(tmp_path / "a.png")
    assert samples[0]["instruction"] == "click save" and samples[0]["source"] == "screenspot"
    assert "image" not in samples[0]  # lazy: a path, decoded by load_image when used
    image = load_image(samples[1])
    assert image.mode == "RGB" and image.size == (64, 48)


def test_screenspot_v2_folder_takes_platform_from_file_names(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    _json(tmp_path / "ann" / "screenspot_web_v2.json", [_seeclick_row(data_source="windows")])
    _json(tmp_path / "ann" / "screenspot_mobile_v2.json",
          [_seeclick_row(), _seeclick_row(bbox=[1, 1, 1, 1], data_type="icon")])
    folder = tmp_path / "ann"
    assert detect_format(folder) == "screenspot_v2"
    assert detect_format(folder / "screenspot_web_v2.json") == "screenspot_v2"
    samples = list(load_grounding(folder, image_root=tmp_path / "imgs"))
    assert [s["platform"] for s in samples] == ["mobile", "mobile", "web"]  # file name, not data_source
    assert [s["bbox"] for s in samples] == [[2.0, 3.0, 6.0, 8.0], [1.0, 1.0, 2.0, 2.0], [2.0, 3.0, 6.0, 8.0]]
    assert {s["source"] for s in samples} == {"screenspot_v2"}
    assert [s["bbox"] for s in load_grounding(folder, image_root=tmp_path / "imgs", limit=2)] == \
        [[2.0, 3.0, 6.0, 8.0], [1.0, 1.0, 2.0, 2.0]]
    assert list(load_grounding(folder, image_root=tmp_path / "imgs", limit=0)) == []


def test_parquet_normalised_boxes_become_pixels_of_image_size_or_the_image(tmp_path):
    small, wide = _png_bytes((40, 30)), _png_bytes((100, 50))
    table = pa.table({
        "image": [{"bytes": small, "path": None}, {"bytes": wide, "path": "x.png"}],
        "bbox": [[0.1, 0.2, 0.5, 0.6], [0.25, 0.0, 1.0, 1.0]],
        "instruction": ["close", "open menu"],
        "data_type": ["icon", "text"],
        "data_source": ["macos", "android"],
    })
    pq.write_table(table, tmp_path / "test-00000.parquet")
    pq.write_table(pa.table({"image": [small], "bbox": [[0.5, 0.5, 0.75, 1.0]], "instruction": ["go"],
                             "data_type": ["text"], "platform": ["web"], "image_size": [[1920, 1080]]}),
                   tmp_path / "test-00001.parquet")
    assert detect_format(tmp_path) == "parquet"
    samples = list(load_grounding(tmp_path))
    assert [s["bbox"] for s in samples] == [
        pytest.approx([4.0, 6.0, 20.0, 18.0]), pytest.approx([25.0, 0.0, 100.0, 50.0]),
        pytest.approx([960.0, 540.0, 1440.0, 1080.0])]  # the image_size column wins over the image
    assert [s["image_size"] for s in samples] == [[40, 30], [100, 50], [1920, 1080]]
    assert [s["platform"] for s in samples] == ["desktop", "mobile", "web"]
    assert samples[0]["image_bytes"] == small and samples[0]["source"] == "screenspot_v2"
    assert load_image(samples[1]).size == (100, 50)


def test_parquet_plain_bytes_column_and_image_path_dicts(tmp_path):
    _png(tmp_path / "shots" / "p.png", (20, 10))
    pq.write_table(pa.table({"image": [_png_bytes((20, 10))], "bbox": [[0.0, 0.0, 0.5, 0.5]],
                             "instruction": ["a"], "data_type": ["text"], "data_source": ["web"]}),
                   tmp_path / "bytes.parquet")
    pq.write_table(pa.table({"image": [{"bytes": None, "path": "p.png"}], "bbox": [[0.5, 0.5, 1.0, 1.0]],
                             "instruction": ["b"], "data_type": ["icon"], "data_source": ["web"]}),
                   tmp_path / "paths.parquet")
    assert next(load_grounding(tmp_path / "bytes.parquet"))["bbox"] == [0.0, 0.0, 10.0, 5.0]
    sample = next(load_grounding(tmp_path / "paths.parquet", image_root=tmp_path / "shots"))
    assert sample["image_path"] == str(tmp_path / "shots" / "p.png") and sample["bbox"] == [10.0, 5.0, 20.0, 10.0]


def test_screenspot_pro_folder_keeps_pixels_ui_type_application_and_negative(tmp_path):
    _png(tmp_path / "images" / "vscode" / "a.png")
    _png(tmp_path / "images" / "quartus" / "q.png")
    _json(tmp_path / "annotations" / "vscode_macos.json",
          [_pro_row(), _pro_row(ui_type="text", gt_type="negative", id="vscode_1")])
    _json(tmp_path / "annotations" / "quartus_windows.json",
          [{k: v for k, v in _pro_row(img_filename="quartus/q.png", platform="windows", bbox=[0, 0, 40, 30]).items()
            if k not in ("application", "gt_type", "id")}])
    folder = tmp_path / "annotations"
    assert detect_format(folder) == "screenspot_pro"
    assert detect_format(folder / "vscode_macos.json") == "screenspot_pro"
    samples = list(load_grounding(folder))  # images/ beside annotations/ by default
    quartus, vscode0, vscode1 = samples  # files in sorted order
    assert vscode0["bbox"] == [10.0, 5.0, 30.0, 25.0] and vscode0["image_size"] == [40, 30]
    assert (vscode0["data_type"], vscode1["data_type"]) == ("icon", "text")
    assert (vscode0["negative"], vscode1["negative"], quartus["negative"]) == (False, True, False)
    assert (vscode0["platform"], vscode0["application"], vscode0["id"]) == ("macos", "vscode", "vscode_0")
    assert (quartus["platform"], quartus["application"], "id" in quartus) == ("windows", "quartus_windows", False)
    assert quartus["image_path"] == str(tmp_path / "images" / "quartus" / "q.png")
    assert {s["source"] for s in samples} == {"screenspot_pro"}


def test_explicit_format_and_edge_within_a_pixel_is_clipped(tmp_path):
    _png(tmp_path / "images" / "vscode" / "a.png")
    path = _json(tmp_path / "annotations" / "one.json", [_pro_row(bbox=[-0.5, 0, 40.75, 30])])
    sample = next(load_grounding(path, format="screenspot_pro"))
    assert sample["bbox"] == [0.0, 0.0, 40.0, 30.0]


def test_samples_come_lazily_so_a_bad_row_fails_only_when_reached(tmp_path):
    _png(tmp_path / "a.png")
    path = _json(tmp_path / "ss.json", [_seeclick_row(), _seeclick_row(img_filename="gone.png")])
    samples = load_grounding(path)
    assert next(samples)["bbox"] == [2.0, 3.0, 6.0, 8.0]
    with pytest.raises(ConfigError, match=r"ss\.json row 1: image file .*gone\.png not found"):
        next(samples)


def _one_line_error(call):
    with pytest.raises(ConfigError) as info:
        list(call())
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("row, expected", [
    ({"instruction": None}, r"row 1: missing key 'instruction'"),
    ({"bbox": [1, 2, 3]}, r"row 1: bbox must be 4 numbers \[x, y, w, h\] \(got 3 values"),
    ({"bbox": [5, 5, 0, 4]}, r"row 1: bbox \[5, 5, 0, 4\] is empty .*x2 > x1"),
    ({"bbox": [30, 5, 20, 4]}, r"row 1: bbox \[30, 5, 20, 4\] .* lies outside the 40x30 image"),
    ({"img_filename": "missing.png"}, r"row 1: image file .*missing\.png not found"),
    ({"data_type": "button"}, r"row 1: data_type / ui_type must be 'text' or 'icon'"),
])
def test_malformed_screenspot_row_fails_with_one_line_naming_file_and_row(tmp_path, row, expected):
    _png(tmp_path / "a.png")
    path = _json(tmp_path / "screenspot_web.json", [_seeclick_row(), _seeclick_row(**row)])
    message = _one_line_error(lambda: load_grounding(path))
    assert str(path) in message
    assert re.search(expected, message), message


@pytest.mark.parametrize("row, expected", [
    ({"bbox": [30, 5, 10, 25]}, r"row 0: bbox \[30, 5, 10, 25\] is empty"),
    ({"bbox": [10, 5, 30, 31.5]}, r"row 0: bbox .* lies outside the 40x30 image"),
    ({"img_size": [40]}, r"row 0: img_size must be \[W, H\]"),
    ({"ui_type": None}, r"row 0: missing key 'ui_type'"),
    ({"gt_type": "maybe"}, r"row 0: gt_type must be 'positive' or 'negative'"),
])
def test_malformed_pro_row_fails_with_one_line(tmp_path, row, expected):
    _png(tmp_path / "images" / "vscode" / "a.png")
    path = _json(tmp_path / "annotations" / "vscode.json", [_pro_row(**row)])
    message = _one_line_error(lambda: load_grounding(tmp_path / "annotations"))
    assert str(path) in message and re.search(expected, message), message


def test_malformed_parquet_row_and_unreadable_files(tmp_path):
    pq.write_table(pa.table({"image": [_png_bytes((40, 30))] * 2, "bbox": [[0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 0.2]],
                             "instruction": ["a", "b"], "data_type": ["text"] * 2, "data_source": ["web"] * 2}),
                   tmp_path / "mirror.parquet")
    message = _one_line_error(lambda: load_grounding(tmp_path / "mirror.parquet"))
    assert "mirror.parquet row 1: bbox must be 4 numbers normalised [x1, y1, x2, y2]" in message
    (tmp_path / "screenspot_desktop_v2.json").write_text('[{"img_filename": "a.png",\n "bbox": [1, 2 3, 4]}]')
    message = _one_line_error(lambda: load_grounding(tmp_path / "screenspot_desktop_v2.json"))
    assert "screenspot_desktop_v2.json line 2 is not JSON" in message
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    assert "broken.parquet is not a readable Parquet file" in _one_line_error(
        lambda: load_grounding(tmp_path / "broken.parquet"))


def test_bad_path_format_and_limit_fail_at_the_call(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_grounding(tmp_path / "nothing.json")
    path = _json(tmp_path / "x.json", [])
    with pytest.raises(ConfigError, match="unknown grounding format 'seeclick'; choose one of screenspot"):
        load_grounding(path, format="seeclick")
    with pytest.raises(ConfigError, match="limit must be a whole number"):
        load_grounding(path, limit=-1)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ConfigError, match="cannot tell the grounding format"):
        load_grounding(tmp_path / "notes.txt")
