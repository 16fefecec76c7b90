"""Pools of scripted Franka Push episodes (videos plus info dicts) for the RAPL benchmarks.

A pool mixes the behaviours of :mod:`envs.franka_rapl.scripted` so the simulated human has
something to rank. Everything is drawn from one ``numpy.random.Generator`` per episode (seeded
from the pool seed and the episode index), and the env is reset with a seed from the same
source, so a pool is reproducible bit for bit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

import envs.franka  # noqa: F401  (registers workbench/FrankaPush-v0)
from envs.franka_rapl.scripted import BEHAVIOURS, make_controller

__all__ = ["BEHAVIOURS", "MIX", "CROP", "rendered_size", "make_env", "Episode", "run_episode", "PoolConfig", "Pool",
           "generate_pool"]

# mixture weights of the pool: preferred detours and zone-crossing pushes are the two poles, the
# rest fill in between (a pool of only good or only bad videos would leave nothing to rank)
MIX = (0.25, 0.2, 0.15, 0.1, 0.15, 0.15)

def make_env(size: int = 64, camera: str = "side", render_size: Optional[int] = None):
    """``workbench/FrankaPush-v0`` (forbidden zone on) rendering square frames of
    ``render_size`` px (default: ``size / CROP``, see :func:`rendered_size`) from ``camera``."""
    import gymnasium as gym

    r = int(render_size or rendered_size(size))
    return gym.make("workbench/FrankaPush-v0", forbidden_zone=True, render_mode="rgb_array", width=r, height=r,
                    camera=camera)


# Camera: "side" (0.75, 0.75, 0.65) looking at (0.5, 0, 0.05) sees the cube past the arm in
# almost every frame; "top" loses it under the hand and forearm while pushing, "front" behind
# the hand whenever it pushes towards the camera. The task (cube, goal, zone) sits around the
# look-at point, so frames are rendered at size / CROP and centre-cropped to ``size``: the cube
# is ~5 px wide in a 64 px frame instead of ~4, and the table's far edge mostly drops out.
CROP = 0.75


def rendered_size(size: int) -> int:
    """The px a frame is rendered at so that its centre crop (:data:`CROP`) is ``size`` px."""
    return int(round(size / CROP))


def _crop(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return frame[top:top + size, left:left + size]


@dataclass
class Episode:
    """One scripted episode: ``video`` uint8 ``[F, size, size, 3]`` (every ``frame_every``-th
    step, the reset frame first), ``infos`` (``steps + 1`` info dicts, reset first),
    ``behaviour``, the seed it was reset with and ``zone``, the forbidden zone's centre xy
    ``(2,)`` in metres (fixed for the episode, so not in the infos; None without a zone)."""

    video: np.ndarray
    infos: List[Dict[str, Any]]
    behaviour: str
    seed: int
    zone: Optional[np.ndarray] = None


def run_episode(env, behaviour: str, seed: int, steps: int = 100, frame_every: int = 5, size: int = 64,
                rng: Optional[np.random.Generator] = None) -> Episode:
    """Reset ``env`` with ``seed``, run ``behaviour``'s controller for ``steps`` steps and keep
    the info dicts of every step and the frames of every ``frame_every``-th step (cropped to
    ``size`` px, see :data:`CROP`)."""
    if steps < 1 or frame_every < 1:
        raise ValueError(f"need steps >= 1 and frame_every >= 1, got {steps}, {frame_every}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    _, info = env.reset(seed=int(seed))
    base = env.unwrapped
    ctl = make_controller(behaviour, info, base.zone_center, base.zone_radius, base.half, steps, rng)
    infos, frames = [_plain(info)], [_crop(env.render(), size)]
    for t in range(1, steps + 1):
        _, _, _, _, info = env.step(ctl(info))
        infos.append(_plain(info))
        if t % frame_every == 0:
            frames.append(_crop(env.render(), size))
    zone = None if base.zone_center is None else np.array(base.zone_center)
    return Episode(np.stack(frames), infos, behaviour, int(seed), zone)


def _plain(info: Mapping[str, Any]) -> Dict[str, Any]:
    """A compact copy of the info dict (arrays copied, so later steps cannot alias them)."""
    return {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in info.items()}


@dataclass
class PoolConfig:
    """How to generate a pool: ``episodes``, ``steps`` per episode, a frame every
    ``frame_every`` steps at ``size`` px from ``camera``, behaviour mixture ``mix`` (weights
    over BEHAVIOURS), ``seed``. ``layouts``: 0 gives every episode its own task layout (cube,
    goal and zone placed by the env from a fresh reset seed); N > 0 cycles through N layouts
    fixed by ``layout_seed`` alone, so pools with different ``seed`` share them (a fixed-scene
    task, closer to the paper's single Franka scene)."""

    episodes: int = 160
    steps: int = 100
    frame_every: int = 5
    size: int = 64
    camera: str = "side"
    seed: int = 0
    mix: Tuple[float, ...] = MIX
    layouts: int = 0
    layout_seed: int = 12345

    def __post_init__(self) -> None:
        if self.episodes < 3:
            raise ValueError(f"a pool needs at least 3 episodes (one triplet), got {self.episodes}")
        if self.layouts < 0:
            raise ValueError(f"layouts must be >= 0 (0: a new layout per episode), got {self.layouts}")
        if len(self.mix) != len(BEHAVIOURS) or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError(f"mix must be {len(BEHAVIOURS)} non-negative weights over {BEHAVIOURS}")


@dataclass
class Pool:
    """Generated episodes plus timing: ``seconds`` (wall time) and ``steps`` / ``frames`` done."""

    episodes: List[Episode]
    seconds: float = 0.0
    steps: int = 0
    frames: int = 0
    behaviour_counts: Dict[str, int] = field(default_factory=dict)


def generate_pool(cfg: PoolConfig, env=None) -> Pool:
    """Run ``cfg.episodes`` scripted episodes. Behaviours are assigned round-robin in proportion
    to ``cfg.mix`` (so even a small pool has every kind), shuffled by the seed; episode ``i``
    uses ``np.random.default_rng([cfg.seed, i])`` for its reset seed (unless ``cfg.layouts``)
    and controller."""
    own = env is None
    env = env or make_env(cfg.size, cfg.camera)
    weights = np.asarray(cfg.mix, dtype=np.float64) / sum(cfg.mix)
    counts = np.floor(weights * cfg.episodes).astype(int)
    for i in np.argsort(-(weights * cfg.episodes - counts))[:cfg.episodes - counts.sum()]:
        counts[i] += 1
    kinds = [b for b, c in zip(BEHAVIOURS, counts) for _ in range(c)]
    np.random.default_rng([cfg.seed, 10**6]).shuffle(kinds)
    start = time.perf_counter()
    episodes = []
    for i, kind in enumerate(kinds):
        rng = np.random.default_rng([cfg.seed, i])
        reset_seed = int(rng.integers(2**31))
        if cfg.layouts:
            reset_seed = int(np.random.default_rng([cfg.layout_seed, i % cfg.layouts]).integers(2**31))
        episodes.append(run_episode(env, kind, reset_seed, cfg.steps, cfg.frame_every, cfg.size, rng))
    seconds = time.perf_counter() - start
    if own:
        env.close()
    return Pool(episodes, seconds, cfg.episodes * cfg.steps, sum(len(e.video) for e in episodes),
                {b: int(c) for b, c in zip(BEHAVIOURS, counts)})
