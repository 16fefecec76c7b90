"""Checkpoints: one safetensors file per save, written atomically, loaded without pickle.

Any nested state (dicts, lists, tensors, numpy arrays, numbers, strings) is split into a
flat set of tensors, stored as safetensors, and a JSON skeleton of everything else, stored in
the file's metadata. A save goes to a temporary file in the same directory, is fsynced, and
renamed into place, so a crash never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench.registry import ConfigError

FORMAT = "workbench-checkpoint-v1"


class CheckpointError(ConfigError):
    """A file that is not a readable workbench checkpoint (another format, or a truncated copy)."""

_NAME = re.compile(r"ckpt_(\d+)\.safetensors$")


def _flatten(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.array(obj, order="C", copy=True))  # keeps 0-d shape
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, tensors)for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def _unflatten(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__dict__" in obj:
            return {(tuple(k) if isinstance(k, list) else k): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def save(path: Path, state: Dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: Dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT, "state": json.dumps(skeleton)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: Path) -> Dict[str, Any]:
    """Read a checkpoint written by ``save`` (safetensors only: no pickle is ever unpickled)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # SafetensorError (not safetensors, truncated header), OSError
        raise CheckpointError(f"{path} is not a readable workbench checkpoint ({_reason(e)})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a workbench checkpoint (format {meta.get('format')!r})")
    try:
        return _unflatten(json.loads(meta["state"]), load_file(str(path)))
    except Exception as e:  # a truncated copy: the header reads, the tensors do not
        raise CheckpointError(f"{path} is not a readable workbench checkpoint ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.removeprefix("Error while deserializing header: ")


def checkpoint_path(directory: Path, iteration: int) -> Path:
    return Path(directory) / f"ckpt_{iteration:08d}.safetensors"


def list_checkpoints(directory: Path) -> List[Path]:
    directory = Path(directory)
    if not directory.exists():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(directory: Path) -> Optional[Path]:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune(directory: Path, keep: int) -> None:
    for p in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)


def rng_state() -> Dict[str, Any]:
    import random

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(legacy=False),
             "python": python_rng_to_plain(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def python_rng_to_plain(state: Tuple[Any, ...]) -> List[Any]:
    """A ``random.Random`` state (``getstate()``: version, 625-int tuple, gauss) as plain lists,
    JSON-ready, the form checkpoints and env state dicts store; :func:`python_rng_from_plain`
    reverses it."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def python_rng_from_plain(plain: Sequence[Any]) -> Tuple[Any, ...]:
    """The ``random.Random`` state (for ``setstate``) that :func:`python_rng_to_plain` wrote."""
    version, internal, gauss = plain
    return (version, tuple(internal), gauss)


def set_rng_state(state: Dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(python_rng_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
