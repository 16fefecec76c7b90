"""Loaders for the public GUI grounding benchmarks, each yielding samples in the GUI grounding
contract (issue 12): ``{"image_path" | "image_bytes", "instruction", "bbox": [x1, y1, x2, y2]
original-image pixels, "image_size": [W, H], "data_type", "platform", "source", ...}``.

The formats (research/anchors_multimodal.md D.1):

- ``screenspot`` -- SeeClick's JSON list of ``{img_filename, bbox: [x, y, w, h] pixels,
  instruction, data_type, data_source}``, images in a folder. SeeClick ships it as
  ``screenspot_{mobile,desktop,web}.json``.
- ``screenspot_v2`` -- OS-Atlas's corrected copy, ``screenspot_{desktop,mobile,web}_v2.json``
  with the same fields; the platform is the one in the file name.
- ``parquet`` -- the Hugging Face mirrors (``HongxinLi/ScreenSpot_v2``, ``lmms-lab/ScreenSpot-v2``):
  ``bbox`` normalised ``[x1, y1, x2, y2]``, an ``image`` column of PNG bytes or ``{bytes, path}``
  dicts, and an ``image_size`` column or else the image's own size.
- ``screenspot_pro`` -- a folder of one JSON per application (``likaixin/ScreenSpot-Pro``
  ``annotations/``): ``img_filename``, ``bbox`` ``[x1, y1, x2, y2]`` pixels, ``img_size`` [W, H],
  ``instruction``, ``ui_type``, ``platform``, ``application``, ``id``, ``gt_type``.

Samples come lazily and carry a path or the encoded bytes, never decoded pixels: ScreenSpot-v2's
images are 1.33 GB and ScreenSpot-Pro's are 4K screenshots. Only the image header is read here,
for its size and to fail early on a missing file; ``load_image`` decodes when a sample is used.
A malformed sample stops the load with one line naming the file, the row and what is wrong.
"""
from __future__ import annotations

import io
import itertools
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from envs.datafiles import read_rows
from workbench.registry import ConfigError

FORMATS = ("screenspot", "screenspot_v2", "parquet", "screenspot_pro")
# Annotation tools round box edges, so an edge up to this far past the border is clipped to the
# image rather than rejected; further out, the box belongs to another image.
EDGE_TOLERANCE_PX = 1.0
DATA_TYPES = ("text", "icon")
# ScreenSpot reports accuracy per mobile / desktop / web; its data_source names the OS, or, for
# web samples, the site ("shop", "forum", "gitlab", "tool"), hence web as the remainder.
_PLATFORM_OF_SOURCE = {"ios": "mobile", "android": "mobile", "mobile": "mobile",
                       "macos": "desktop", "windows": "desktop", "desktop": "desktop", "web": "web"}
_PLATFORM_IN_NAME = re.compile(r"screenspot_(mobile|desktop|web)(_v2)?\.json")
_V2_NAME = re.compile(r"screenspot_(mobile|desktop|web)_v2\.json")

Sample = Dict[str, Any]


def load_grounding(path, format: Optional[str] = None, image_root=None,
                   limit: Optional[int] = None) -> Iterator[Sample]:
    """The samples of a grounding benchmark at ``path`` (a file or a folder), one at a time.

    ``format`` is one of ``FORMATS``, detected from ``path`` when None (see ``detect_format``).
    ``image_root`` is the folder that ``img_filename`` is relative to; by default the annotation
    file's folder, or for ScreenSpot-Pro the ``images/`` folder beside the annotations folder.
    ``limit`` stops after that many samples (None: all). The path, format and limit are checked
    now; each sample is checked when it is reached.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"grounding data path {path} does not exist")
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise ConfigError(f"unknown grounding format {format!r}; choose one of {', '.join(FORMATS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a whole number >= 0 or None (got {limit!r})")
    files = _annotation_files(path, ".parquet" if format == "parquet" else ".json")
    root = Path(image_root) if image_root is not None else None
    samples = {"screenspot": _screenspot_samples, "screenspot_v2": _screenspot_samples,
               "parquet": _parquet_samples, "screenspot_pro": _pro_samples}[format](files, root, format)
    return itertools.islice(samples, limit)


def detect_format(path) -> str:
    """The format of ``path``: a ``.parquet`` file or a folder of them is ``parquet``; files named
    ``screenspot_{platform}_v2.json`` (alone or a folder of them) are ``screenspot_v2``; another
    folder of JSON files is ``screenspot_pro``; another JSON file is ``screenspot_pro`` when its
    rows have ScreenSpot-Pro's ``img_size`` / ``ui_type``, else ``screenspot``."""
    path = Path(path)
    if path.is_dir():
        jsons, parquets = sorted(path.glob("*.json")), sorted(path.glob("*.parquet"))
        if parquets and not jsons:
            return "parquet"
        if jsons and all(_V2_NAME.fullmatch(p.name) for p in jsons):
            return "screenspot_v2"
        if jsons:
            return "screenspot_pro"
        raise ConfigError(f"{path} holds no .json or .parquet files; point at a ScreenSpot JSON, "
                          f"a folder of per-application JSONs or a parquet file")
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix != ".json":
        raise ConfigError(f"{path}: cannot tell the grounding format from a '{path.suffix}' file; "
                          f"use .json or .parquet, or pass format= one of {', '.join(FORMATS)}")
    if _V2_NAME.fullmatch(path.name):
        return "screenspot_v2"
    rows = read_rows(path, "path", "img_filename")
    return "screenspot_pro" if rows and ({"img_size", "ui_type"} & set(rows[0][1])) else "screenspot"


def load_image(sample: Sample) -> Image.Image:
    """The sample's screenshot as an RGB image, decoded now (loaders give ``image_path`` or
    ``image_bytes`` so a benchmark is not held in memory as pixels)."""
    if "image" in sample:
        return sample["image"]
    source = io.BytesIO(sample["image_bytes"]) if "image_bytes" in sample else sample["image_path"]
    with Image.open(source) as image:
        return image.convert("RGB")


def _annotation_files(path: Path, suffix: str) -> List[Path]:
    if not path.is_dir():
        return [path]
    files = sorted(path.glob(f"*{suffix}"))
    if not files:
        raise ConfigError(f"{path} holds no {suffix} files")
    return files


def _screenspot_samples(files: Sequence[Path], image_root: Optional[Path], format: str) -> Iterator[Sample]:
    """ScreenSpot and ScreenSpot-v2 JSON: bbox [x, y, w, h] pixels -> [x, y, x + w, y + h]."""
    for file in files:
        named = _PLATFORM_IN_NAME.fullmatch(file.name)
        root = image_root or file.parent
        for where, row in read_rows(file, "path", "img_filename"):
            at = f"{file} {where}"
            _require(row, ("img_filename", "bbox", "instruction", "data_type")
                     + (() if named else ("data_source",)), at)
            image_path = _image_file(root, row["img_filename"], at)
            size = _header_size(image_path, at)
            x, y, w, h = _numbers(row["bbox"], "[x, y, w, h]", at)
            yield {"image_path": str(image_path), "instruction": _instruction(row, at),
                   "bbox": _checked_box([x, y, x + w, y + h], row["bbox"], size, at),
                   "image_size": list(size), "data_type": _data_type(row["data_type"], at),
                   "platform": named.group(1) if named else _platform(row["data_source"]),
                   "source": format}


def _parquet_samples(files: Sequence[Path], image_root: Optional[Path], format: str) -> Iterator[Sample]:
    """The parquet mirrors: bbox normalised [x1, y1, x2, y2] -> pixels of the image's size."""
    import pyarrow.parquet as pq

    for file in files:
        try:
            batches = pq.ParquetFile(file).iter_batches(batch_size=32)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ConfigError(f"{file} is not a readable Parquet file ({str(e).splitlines()[0]})") from None
        rows = (row for batch in batches for row in batch.to_pylist())
        for index, row in enumerate(rows):
            at = f"{file} row {index}"
            _require(row, ("image", "bbox", "instruction", "data_type")
                     + (() if "platform" in row else ("data_source",)), at)
            sample, size = _parquet_image(row["image"], image_root or file.parent, at)
            if row.get("image_size") is not None:
                size = _size(row["image_size"], "image_size", at)
            (w, h), box = size, _numbers(row["bbox"], "normalised [x1, y1, x2, y2]", at)
            sample.update(instruction=_instruction(row, at), image_size=list(size),
                          bbox=_checked_box([box[0] * w, box[1] * h, box[2] * w, box[3] * h], row["bbox"], size, at),
                          data_type=_data_type(row["data_type"], at),
                          platform=str(row["platform"]) if "platform" in row else _platform(row["data_source"]),
                          source="screenspot_v2")
            if row.get("id") is not None:
                sample["id"] = row["id"]
            yield sample


def _pro_samples(files: Sequence[Path], image_root: Optional[Path], format: str) -> Iterator[Sample]:
    """ScreenSpot-Pro: bbox already [x1, y1, x2, y2] pixels of ``img_size``; ``ui_type`` is the
    text/icon split; ``gt_type`` negative marks an instruction whose target is absent."""
    for file in files:
        root = image_root or _pro_image_root(file.parent)
        for where, row in read_rows(file, "path", "img_filename"):
            at = f"{file} {where}"
            _require(row, ("img_filename", "bbox", "img_size", "instruction", "ui_type", "platform"), at)
            size = _size(row["img_size"], "img_size", at)
            gt_type = row.get("gt_type", "positive")
            if gt_type not in ("positive", "negative"):
                raise ConfigError(f"{at}: gt_type must be 'positive' or 'negative' (got {gt_type!r})")
            sample = {"image_path": str(_image_file(root, row["img_filename"], at)),
                      "instruction": _instruction(row, at),
                      "bbox": _checked_box(_numbers(row["bbox"], "[x1, y1, x2, y2]", at), row["bbox"], size, at),
                      "image_size": list(size), "data_type": _data_type(row["ui_type"], at),
                      "platform": str(row["platform"]), "source": "screenspot_pro",
                      "application": str(row.get("application", file.stem)), "negative": gt_type == "negative"}
            if row.get("id") is not None:
                sample["id"] = row["id"]
            yield sample


def _pro_image_root(annotations: Path) -> Path:
    """ScreenSpot-Pro lays out ``annotations/`` beside ``images/``."""
    images = annotations.parent / "images"
    return images if images.is_dir() else annotations


def _require(row: Dict[str, Any], keys: Sequence[str], at: str) -> None:
    missing = [k for k in keys if row.get(k) is None]
    if missing:
        raise ConfigError(f"{at}: missing key {', '.join(repr(k) for k in missing)} "
                          f"(the row has {', '.join(sorted(map(str, row))) or 'no keys'})")


def _numbers(value: Any, layout: str, at: str) -> List[float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 4
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok:
        count = f"{len(value)} values" if isinstance(value, (list, tuple)) else type(value).__name__
        raise ConfigError(f"{at}: bbox must be 4 numbers {layout} (got {count}: {value!r})")
    return [float(v) for v in value]


def _checked_box(box: List[float], given: Any, size: Tuple[int, int], at: str) -> List[float]:
    """``box`` in pixels, checked for order and against the image, edges within
    ``EDGE_TOLERANCE_PX`` of the border clipped to it; ``given`` is the row's bbox, for messages."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise ConfigError(f"{at}: bbox {given!r} is empty in pixels {box} (needs x2 > x1 and y2 > y1)")
    w, h = size
    tol = EDGE_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
        raise ConfigError(f"{at}: bbox {given!r} (pixels {box}) lies outside the {w}x{h} image")
    return [min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)]


def _size(value: Any, key: str, at: str) -> Tuple[int, int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        raise ConfigError(f"{at}: {key} must be [W, H], two positive whole numbers (got {value!r})")
    return int(value[0]), int(value[1])


def _instruction(row: Dict[str, Any], at: str) -> str:
    text = row["instruction"]
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{at}: instruction must be a non-empty string (got {text!r})")
    return text


def _data_type(value: Any, at: str) -> str:
    if value not in DATA_TYPES:
        raise ConfigError(f"{at}: data_type / ui_type must be 'text' or 'icon' (got {value!r})")
    return value


def _platform(data_source: Any) -> str:
    return _PLATFORM_OF_SOURCE.get(str(data_source).lower(), "web")


def _image_file(root: Path, name: Any, at: str) -> Path:
    path = root / str(name)
    if not path.is_file():
        raise ConfigError(f"{at}: image file {path} not found (pass image_root= the folder holding the images)")
    return path


def _header_size(source, at: str) -> Tuple[int, int]:
    """The image's (W, H) from its header alone (PIL decodes pixels only on ``load``)."""
    try:
        with Image.open(source) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"{at}: the image is not readable ({str(e).splitlines()[0]})") from None


def _parquet_image(value: Any, root: Path, at: str) -> Tuple[Sample, Tuple[int, int]]:
    """A parquet image cell (PNG bytes, or the ``datasets`` Image feature's ``{bytes, path}``) as
    the sample's image key and the image's size."""
    if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
        path = _image_file(root, value["path"], at)
        return {"image_path": str(path)}, _header_size(path, at)
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, (bytes, bytearray)):
        raise ConfigError(f"{at}: image must be PNG bytes or {{'bytes': ..., 'path': ...}} (got {type(value).__name__})")
    return {"image_bytes": bytes(data)}, _header_size(io.BytesIO(data), at)
