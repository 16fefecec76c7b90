"""Scripted rollouts and the simulated human for ``workbench bench rapl-franka``.

RAPL's reward-quality experiment needs a pool of robot videos whose quality, as a person would
judge it, spreads from bad to good. Here the person wants the cube pushed onto the goal disc
*without the cube ever crossing the red forbidden zone* that ``workbench/FrankaPush-v0`` puts
between the cube and the goal. Scripted controllers read the privileged state (cube, goal and
zone positions) and produce six behaviours:

- ``detour``: push the cube round the zone on a curved path, then onto the goal (the
  preferred behaviour);
- ``straight``: push it straight at the goal, through the zone;
- ``partial``: a detour or straight push abandoned part-way;
- ``wrong``: a clean push to the wrong place (a random point on the table);
- ``sloppy``: a detour or straight push with heavy action noise and loose alignment;
- ``random``: smooth random arm motion (sometimes it bumps the cube).

Each episode also gets its own action-noise level, speed and stop time, so the oracle's scores
spread within a behaviour as well as between them. Everything is drawn from one
``numpy.random.Generator`` per episode (seeded from the pool seed and the episode index), and
the env is reset with a seed from the same source, so a pool is reproducible bit for bit.

The oracle (:func:`oracle_score`) is documented there; :func:`make_oracle` wraps it in RAPL's
:class:`~workbench.rewards.rapl.PreferenceOracle`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["BEHAVIOURS", "ZONE_LAMBDA", "PoolConfig", "Pool", "oracle_score", "make_oracle", "make_env",
           "run_episode", "generate_pool"]

BEHAVIOURS = ("detour", "straight", "partial", "wrong", "sloppy", "random")
# mixture weights of the pool: preferred detours and zone-crossing pushes are the two poles, the
# rest fill in between (a pool of only good or only bad videos would leave nothing to rank)
MIX = (0.25, 0.2, 0.15, 0.1, 0.15, 0.15)

ZONE_LAMBDA = 1.0  # oracle cost of one step with the cube in the zone, in metre-steps (see oracle_score)

HIGH, LOW = 0.10, 0.03  # TCP heights (m): travel above the cube (top at 0.05), push at its middle
STEP = 0.05  # env action_scale: metres per unit action per step (FrankaPush default)


def oracle_score(infos: Sequence[Mapping[str, Any]], zone_lambda: float = ZONE_LAMBDA) -> float:
    """The simulated human's return of one episode (higher is better):

        score = - sum_t dist_object_goal_t  -  zone_lambda * #{t : in_forbidden_zone_t}

    over the per-step info dicts of ``workbench/FrankaPush-v0`` (the reset info included).
    ``dist_object_goal`` is in metres, so the first term is in metre-steps (leaving the cube
    0.16 m from the goal for the 101 infos of an episode costs about 16) and ``zone_lambda`` is
    metre-steps per step in the zone: with the default 1.0 one step inside costs as much as
    the cube sitting 1 m from the goal for a step. Why 1.0: the scripted straight push reaches
    the goal at a distance cost of about 5 but drags the cube through the zone for 4-10 steps;
    the detour avoids the zone but, taking about twice as long, pays about 10. At 1.0 the two
    costs balance so the zone decides: a detour beats the straight push in about 3 of 4 task
    layouts (a quick push that only clips the zone's edge wins the rest), both beat leaving the
    cube where it is (about -16), and a push abandoned inside the zone is the worst of all
    (down to -90). At 0.5 the straight push would win 9 times in 10 (the zone barely
    matters); from 1.5 up it would rank with doing nothing.
    """
    if not infos:
        raise ValueError("oracle_score needs at least one info dict")
    if not zone_lambda >= 0:
        raise ValueError(f"zone_lambda must be >= 0, got {zone_lambda}")
    try:
        dist = sum(float(i["dist_object_goal"]) for i in infos)
        inside = sum(bool(i["in_forbidden_zone"]) for i in infos)
    except KeyError as e:
        raise ValueError(f"oracle_score needs FrankaPush info dicts with {e.args[0]!r} (forbidden zone on)") from None
    return -dist - zone_lambda * inside


def make_oracle(zone_lambda: float = ZONE_LAMBDA, equal_tol: float = 0.0):
    """RAPL's :class:`PreferenceOracle` ranking rollouts by :func:`oracle_score`."""
    from workbench.rewards.rapl import PreferenceOracle

    return PreferenceOracle(lambda infos: oracle_score(infos, zone_lambda), equal_tol=equal_tol)


# --- scripted controllers ------------------------------------------------------------------------


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


# --- episodes and pools -----------------------------------------------------------------------------


def make_env(size: int = 64, camera: str = "side", render_size: Optional[int] = None):
    """``workbench/FrankaPush-v0`` (forbidden zone on) rendering square frames of
    ``render_size`` px (default: ``size / CROP``) from ``camera``; the env package is imported
    here, through the plugin loader, never when this module is imported."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium as gym
    import workbench.plugins

    workbench.plugins.load([])
    r = int(render_size or _render_size(size))
    return gym.make("workbench/FrankaPush-v0", forbidden_zone=True, render_mode="rgb_array", width=r, height=r,
                    camera=camera)


# Camera: "side" (0.75, 0.75, 0.65) looking at (0.5, 0, 0.05) sees the cube past the arm in
# almost every frame; "top" loses it under the hand and forearm while pushing, "front" behind
# the hand whenever it pushes towards the camera. The task (cube, goal, zone) sits around the
# look-at point, so frames are rendered at size / CROP and centre-cropped to ``size``: the cube
# is ~5 px wide in a 64 px frame instead of ~4, and the table's far edge mostly drops out.
CROP = 0.75


def _render_size(size: int) -> int:
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
