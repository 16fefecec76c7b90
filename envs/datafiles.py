"""Rows of a local data file (JSONL, JSON, CSV, Parquet), read and checked here rather than by
``datasets``, so a bad line ends in one line naming the file and line instead of a pyarrow
traceback. Used by the text ``dataset`` task and by the diffusion prompt files.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

Rows = List[Tuple[str, Dict[str, Any]]]  # (where: "line 3" / "row 3", row)

from workbench.registry import ConfigError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: Path, what: str, required: str) -> Rows:
    """The rows of ``path`` as (where, dict) pairs, ``where`` naming its line for messages. ``what`` names the setting that gave the path (for the
    message); ``required`` is the column every CSV header must name."""
    path = Path(path)
    reader = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}.get(path.suffix)
    if reader is None:
        raise ConfigError(f"{what}={path}: unknown file type; use {', '.join(SUFFIXES)}")
    try:
        return reader(path, what, required)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what}={path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _jsonl(path: Path, what: str, required: str) -> Rows:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} line {n} is not JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path} line {n} is not a JSON object ({{\"{required}\": ...}}); fix or remove that line")
            rows.append((f"line {n}", row))
    return rows


def _json(path: Path, what: str, required: str) -> Rows:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.lineno > 1 and text.lstrip().startswith("{"):  # one object per line: JSON Lines under a .json name
            return _jsonl(path, what, required)
        raise ConfigError(f"{path} line {e.lineno} is not JSON ({e.msg}); fix the file") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):  # columns -> lists
        data = [dict(zip(data, values)) for values in zip(*data.values())]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ConfigError(f"{path} must hold a list of objects, a mapping of columns to lists, or one object per line")
    return [(f"row {i}", r) for i, r in enumerate(data)]


def _csv(path: Path, what: str, required: str) -> Rows:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or required not in header:
            raise ConfigError(f"{what}={path}: the first line must be a header naming the '{required}' column "
                              f"(found {header!r}); add a header line such as '{required}'")
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ConfigError(f"{path} line {reader.line_num} has {len(row)} fields, the header {len(header)}; "
                                  f"quote fields that hold commas")
            rows.append((f"line {reader.line_num}", dict(zip(header, row))))
    return rows


def _parquet(path: Path, what: str, required: str) -> Rows:
    import pyarrow.parquet as pq

    try:
        return [(f"row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ConfigError(f"{what}={path} is not a readable Parquet file ({str(e).splitlines()[0]})") from None
