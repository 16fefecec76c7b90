"""Scripted controllers for the RAPL benchmarks on Franka Push with a forbidden zone.

RAPL's reward-quality experiment needs robot videos whose quality, as the simulated human
(:mod:`envs.franka_rapl.oracle`) would judge it, spreads from bad to good. The controllers here
read the privileged state (cube, goal and zone positions) and produce six behaviours:

- ``detour``: push the cube round the zone on a curved path, then onto the goal (the
  preferred behaviour);
- ``straight``: push it straight at the goal, through the zone;
- ``partial``: a detour or straight push abandoned part-way;
- ``wrong``: a clean push to the wrong place (a random point on the table);
- ``sloppy``: a detour or straight push with heavy action noise and loose alignment;
- ``random``: smooth random arm motion (sometimes it bumps the cube).

Each episode also gets its own action-noise level, speed and stop time (:func:`make_controller`),
so the oracle's scores spread within a behaviour as well as between them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["BEHAVIOURS", "Pusher", "RandomMotion", "make_controller"]

BEHAVIOURS = ("detour", "straight", "partial", "wrong", "sloppy", "random")

HIGH, LOW = 0.10, 0.03  # TCP heights (m): travel above the cube (top at 0.05), push at its middle
STEP = 0.05  # env action_scale: metres per unit action per step (FrankaPush default)

def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else np.array([1.0, 0.0])


class Pusher:
    """Closed-loop point pusher that moves the cube along a polyline ``path`` of xy points (m)
    ending at its target (the cube's start is prepended on the first step).

    Pure pursuit: each step the push direction ``u`` points from the cube to the path point
    ``lookahead`` m beyond the cube's projection on the path (the last point once it is that
    close). If the TCP is low, behind the cube and within ``align_tol`` m of the push line, it
    pushes on at ``speed`` m/step (commanded; the arm lags to about half) and steers back onto
    the line; otherwise it lifts to ``HIGH``, flies to the point behind the cube, descends and
    tries again. The push ends when the cube is within ``tol`` m of the target, or at
    ``stop_step``; then the arm lifts and holds. ``noise``: std of Gaussian action noise (action
    units, 1 = 5 cm/step).
    """

    def __init__(self, path: Sequence[np.ndarray], half: float, speed: float = 0.025, tol: float = 0.015,
                 noise: float = 0.0, align_tol: float = 0.02, lookahead: float = 0.07, stop_step: Optional[int] = None,
                 rng: Optional[np.random.Generator] = None) -> None:
        if not path:
            raise ValueError("Pusher needs a path with at least one point (the target)")
        self.path = [np.asarray(w, dtype=np.float64)[:2] for w in path]
        self.half, self.speed, self.tol, self.noise, self.align_tol = half, speed, tol, noise, align_tol
        self.lookahead, self.stop_step, self.rng = lookahead, stop_step, rng or np.random.default_rng(0)
        self.t, self.seg, self.phase, self.finished = 0, 0, "travel", False
        self.points: Optional[np.ndarray] = None
        self.last = np.zeros(3)

    def done(self) -> bool:
        return self.finished or (self.stop_step is not None and self.t >= self.stop_step)

    def _aim(self, cube: np.ndarray) -> np.ndarray:
        """The pursuit point (2,): ``lookahead`` along the path past the cube's projection
        (segments are searched forward from the current one, so progress never goes back)."""
        pts = self.points
        best, best_d, best_f = self.seg, np.inf, 0.0
        for i in range(self.seg, min(self.seg + 3, len(pts) - 1)):
            seg = pts[i + 1] - pts[i]
            f = float(np.clip((cube - pts[i]) @ seg / max(float(seg @ seg), 1e-12), 0.0, 1.0))
            d = float(np.linalg.norm(pts[i] + f * seg - cube))
            if d < best_d:
                best, best_d, best_f = i, d, f
        self.seg = best
        left, i, pos = self.lookahead, best, pts[best] + best_f * (pts[best + 1] - pts[best])
        while i < len(pts) - 1:
            step = float(np.linalg.norm(pts[i + 1] - pos))
            if step >= left:
                return pos + (pts[i + 1] - pos) * (left / max(step, 1e-12))
            left, pos, i = left - step, pts[i + 1], i + 1
        return pts[-1]

    def target(self, info: Mapping[str, Any]) -> np.ndarray:
        """The TCP position (3,) to head for this step."""
        ee, cube = np.asarray(info["ee_pos"]), np.asarray(info["object_pos"])[:2]
        if self.points is None:
            self.points = np.array([cube] + self.path)
        if np.linalg.norm(self.points[-1] - cube) < self.tol:
            self.finished = True
        if self.done():
            return np.array([ee[0], ee[1], HIGH])
        u = _unit(self._aim(cube) - cube)
        n = np.array([-u[1], u[0]])
        rel = ee[:2] - cube
        along, lateral = float(rel @ u), float(rel @ n)
        behind = cube - u * (self.half + 0.04)  # clear of the fingers (0.027 m in y) past a turned cube's corner
        off = float(np.linalg.norm(ee[:2] - behind))
        low = ee[2] < LOW + 0.015
        if low and along < -0.8 * self.half and abs(lateral) < self.align_tol:
            self.phase = "push"  # in contact (or about to be): push on, steering back onto the line
            xy = ee[:2] + u * self.speed - n * lateral
            return np.array([xy[0], xy[1], LOW])
        if self.phase == "push":  # lost the line: lift clear of the cube before flying over it
            self.phase = "lift" if np.linalg.norm(rel) < self.half + 0.06 else "travel"
        if self.phase == "lift":
            if ee[2] < HIGH - 0.02:
                return np.array([ee[0], ee[1], HIGH])
            self.phase = "travel"
        if self.phase == "descend" and off > 0.025:
            self.phase = "travel"
        if self.phase == "travel" and off < 0.01:
            self.phase = "descend"
        if self.phase == "descend":
            return np.array([behind[0], behind[1], LOW])
        return np.array([behind[0], behind[1], HIGH])

    def __call__(self, info: Mapping[str, Any]) -> np.ndarray:
        tgt = self.last = self.target(info)
        self.t += 1
        a = (tgt - np.asarray(info["ee_pos"])) / STEP
        a = a / max(1.0, float(np.abs(a).max()))
        a = a + self.noise * self.rng.standard_normal(3)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


class RandomMotion:
    """Smooth random TCP motion: an Ornstein-Uhlenbeck action with std ``scale`` (action units)
    and a pull towards the table so it sometimes bumps the cube."""

    def __init__(self, rng: np.random.Generator, scale: float = 0.5, theta: float = 0.2) -> None:
        self.rng, self.scale, self.theta, self.a = rng, scale, theta, np.zeros(3)

    def __call__(self, info: Mapping[str, Any]) -> np.ndarray:
        self.a += -self.theta * self.a + self.scale * np.sqrt(2 * self.theta) * self.rng.standard_normal(3)
        a = self.a.copy()
        a[2] += (0.06 - float(info["ee_pos"][2])) / STEP * 0.3  # hover near cube height
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def _detour_path(cube: np.ndarray, goal: np.ndarray, zone: np.ndarray, radius: float,
                 rng: np.random.Generator, points: int = 16) -> List[np.ndarray]:
    """Cube xy path (m) round the zone the short way: in polar coordinates about the zone
    centre the angle sweeps from the cube's to the goal's while the radius blends from the
    cube's distance to the goal's, bulging out to ``radius + 0.045..0.06`` m half-way. Both
    ends lie at least 0.06 m from the centre (FrankaPush puts the zone half-way between them),
    so the whole path keeps the cube's centre out of the disc, and it starts tangentially, so
    no sideways shove is needed first."""
    r0, r1 = float(np.linalg.norm(cube - zone)), float(np.linalg.norm(goal - zone))
    r_mid = radius + rng.uniform(0.045, 0.06)
    a0 = np.arctan2(*(cube - zone)[::-1])
    a1 = np.arctan2(*(goal - zone)[::-1])
    sweep = (a1 - a0 + np.pi) % (2 * np.pi) - np.pi  # the shorter way round, in (-pi, pi]
    f = np.linspace(0.0, 1.0, points + 1)[1:]
    r = (1 - f) * r0 + f * r1 + np.sin(np.pi * f) * max(0.0, r_mid - (r0 + r1) / 2)
    path = [zone + ri * np.array([np.cos(a), np.sin(a)]) for ri, a in zip(r, a0 + sweep * f)]
    path[-1] = goal.copy()
    return path


def _random_point(rng: np.random.Generator, goal: np.ndarray) -> np.ndarray:
    """A table point at least 0.08 m from the goal (a clearly wrong place)."""
    for _ in range(100):
        p = rng.uniform([0.38, -0.22], [0.68, 0.22])
        if np.linalg.norm(p - goal) > 0.08:
            return p
    return p


def make_controller(behaviour: str, info: Mapping[str, Any], zone: np.ndarray, radius: float, half: float,
                    steps: int, rng: np.random.Generator):
    """A controller ``info -> action`` for one episode of ``behaviour`` (one of BEHAVIOURS, or
    ``idle``: hold still, the no-push reference of the tests), with per-episode random speed,
    noise and (for ``partial``) stop time."""
    if behaviour not in BEHAVIOURS + ("idle",):
        raise ValueError(f"behaviour={behaviour!r} is not valid; valid choices: {', '.join(BEHAVIOURS + ('idle',))}")
    if behaviour == "idle":
        return lambda info: np.zeros(3, np.float32)
    cube, goal = np.asarray(info["object_pos"])[:2], np.asarray(info["goal_pos"])[:2]
    speed = rng.uniform(0.02, 0.03)
    noise = rng.uniform(0.0, 0.15)
    if behaviour == "random":
        return RandomMotion(rng, scale=rng.uniform(0.3, 0.8))
    detour = rng.random() < 0.5  # for partial / sloppy: which push they botch
    if behaviour == "detour" or (behaviour in ("partial", "sloppy") and detour):
        path = _detour_path(cube, goal, zone, radius, rng)
    elif behaviour == "wrong":
        path = [_random_point(rng, goal)]
    else:
        path = [goal.copy()]
    # a straight push tolerates more misalignment (fewer re-approaches); a detour follows its
    # curve more tightly so the cube does not cut the corner into the zone
    kw: Dict[str, Any] = dict(speed=speed, noise=noise, align_tol=0.02 if len(path) > 1 else 0.03)
    if behaviour == "partial":
        kw["stop_step"] = int(rng.uniform(0.15, 0.45) * steps)  # mid-push
    if behaviour == "sloppy":
        kw.update(noise=rng.uniform(0.3, 0.8), align_tol=0.03, tol=0.04)
    return Pusher(path, half, rng=rng, **kw)


