"""Writing rollout frames to mp4 with OpenCV (a core dependency, no ffmpeg binary needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a video writer for {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.asarray(frame, dtype=np.uint8), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
