"""Franka Panda manipulation tasks for gymnasium: Reach, Push (with an optional forbidden zone)
and PickPlace, registered on import as ``workbench/FrankaReach-v0``, ``workbench/FrankaPush-v0``
and ``workbench/FrankaPickPlace-v0``.

Every step the policy moves the tool centre point (TCP, between the finger pads) by
``action[:3] * action_scale`` metres; one damped-least-squares IK step turns that into joint
position targets for the arm's servos, with the hand held pointing down, and the physics runs
``substeps`` steps of ``timestep`` (default 10 x 4 ms: 25 Hz control). PickPlace has a fourth
action for the fingers (-1 open, +1 closed). Rewards are dense (negative distances in metres)
plus ``success_bonus`` on every step that meets the task's success test; ``info["is_success"]``
reports it. Observations (``obs_mode``): ``state`` (float32 vector), ``pixels`` ({"pixels"}) or
``pixels+state`` ({"pixels", "state"}); pixels are uint8 (image_height, image_width, 3) frames
from ``camera``, rendered offscreen only when an observation or ``render()`` needs them.

All task state (arm, cube, goal and zone, which are mocap bodies) lives in ``data``, so
``mj_getState``/``mj_setState`` plus ``np_random`` checkpoint an episode completely.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Dict, Optional, Tuple

import gymnasium as gym
import mujoco
import numpy as np

from robots.panda.control import PandaController, solve_ik
from robots.panda.scene import SceneConfig, build_model, render_option

DOWN = np.diag([1.0, -1.0, -1.0])  # TCP frame: hand axis pointing down, fingers opening along world y
WORKSPACE = np.array([[0.25, -0.40, 0.03], [0.80, 0.40, 0.45]])  # TCP target box (m): low, high
OBS_MODES = ("state", "pixels", "pixels+state")


class FrankaEnv(gym.Env, abc.ABC):
    """Shared machinery; subclasses set the scene, the task sampling, observation and reward.

    Keyword arguments (all tasks): obs_mode, render_mode (None | "rgb_array"), width/height
    (render() frames, px), image_width/image_height (pixel observations, px), camera
    ("front" | "side" | "top"; "side" sees the cube past the arm), action_scale (m per unit
    action per step), substeps, timestep (s),
    success_threshold (m), success_bonus, terminate_on_success, start_noise (rad of joint noise
    at reset), fast_pixels (pixel observations draw the arm with its low-poly collision meshes,
    ~10x faster in software GL), fast_render (the same for ``render()`` frames, e.g. the frames a
    learned video reward watches; videos for people keep the detailed meshes by default).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}
    start_tcp = np.array([0.45, 0.0, 0.25])
    has_gripper_action = False
    gripper_width = 0.08  # fixed finger separation when the policy does not control it

    def __init__(self, obs_mode: str = "state", render_mode: Optional[str] = None, width: int = 256, height: int = 256,
                 image_width: int = 64, image_height: int = 64, camera: str = "front", action_scale: float = 0.05,
                 substeps: int = 10, timestep: float = 0.004, success_threshold: float = 0.05, success_bonus: float = 1.0,
                 terminate_on_success: bool = False, start_noise: float = 0.02, fast_pixels: bool = True,
                 fast_render: bool = False, scene: Optional[SceneConfig] = None) -> None:
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode={obs_mode!r} is not valid; valid choices: {', '.join(OBS_MODES)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r} is not valid; valid choices: None, rgb_array")
        if min(width, height, image_width, image_height) < 1 or substeps < 1 or action_scale <= 0 or timestep <= 0:
            raise ValueError("image sizes and substeps must be >= 1, action_scale and timestep > 0")
        self.obs_mode, self.render_mode, self.camera = obs_mode, render_mode, camera
        self.render_size, self.image_size = (int(width), int(height)), (int(image_width), int(image_height))
        self.action_scale, self.substeps = float(action_scale), int(substeps)
        self.success_threshold, self.success_bonus = float(success_threshold), float(success_bonus)
        self.terminate_on_success, self.start_noise = bool(terminate_on_success), float(start_noise)
        self._pixel_option, self._render_option = render_option(detailed=not fast_pixels), render_option(detailed=not fast_render)
        offscreen = (max(self.render_size[0], self.image_size[0]), max(self.render_size[1], self.image_size[1]))
        self.model = build_model(dataclasses.replace(scene or SceneConfig(), timestep=timestep, offscreen_size=offscreen))
        self.data = mujoco.MjData(self.model)
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / (timestep * substeps)))}
        if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"camera={camera!r} is not valid; valid choices: front, side, top")
        self.ctl = PandaController(self.model, self.data)
        self.q_start = solve_ik(self.model, self.start_tcp, DOWN)
        self.goal_mocap = self.model.body("goal").mocapid[0]
        self._renderers: Dict[Tuple[int, int], mujoco.Renderer] = {}
        self._setup()
        n_act = 4 if self.has_gripper_action else 3
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n_act,), np.float32)
        mujoco.mj_resetDataKeyframe(self.model, self.data, 0)
        mujoco.mj_forward(self.model, self.data)
        state = gym.spaces.Box(-np.inf, np.inf, self._state().shape, np.float32)
        pixels = gym.spaces.Box(0, 255, (self.image_size[1], self.image_size[0], 3), np.uint8)
        self.observation_space = {"state": state, "pixels": gym.spaces.Dict({"pixels": pixels}),
                                  "pixels+state": gym.spaces.Dict({"pixels": pixels, "state": state})}[obs_mode]

    # --- task hooks (subclasses) -----------------------------------------------------------
    def _setup(self) -> None:
        """Look up task-specific model ids (called once the model exists)."""

    @abc.abstractmethod
    def _sample_task(self) -> None:
        """Place the goal (and object, zone) with ``self.np_random``."""

    @abc.abstractmethod
    def _task_state(self) -> np.ndarray:
        """Task part of the state vector."""

    @abc.abstractmethod
    def _evaluate(self) -> Tuple[float, bool, Dict[str, Any]]:
        """(reward, success, privileged info) of the current state."""

    # --- gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """Arm at its start pose plus uniform joint noise, then a freshly sampled task."""
        super().reset(seed=seed)
        mujoco.mj_resetDataKeyframe(self.model, self.data, 0)
        q = self.q_start + self.np_random.uniform(-self.start_noise, self.start_noise, 7)
        self.data.qpos[self.ctl.arm_qpos] = q
        self.ctl.set_arm_targets(q)
        self.data.qpos[self.ctl.finger_qpos] = self.gripper_width / 2
        self.ctl.set_gripper(self.gripper_width)
        self._sample_task()
        mujoco.mj_forward(self.model, self.data)
        _, success, info = self._evaluate()
        return self._obs(), {**info, "is_success": success}

    def step(self, action):
        """Move the TCP by ``action[:3] * action_scale`` (m), the fingers by ``action[3]``."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite with shape {self.action_space.shape}, got {action.shape}")
        action = np.clip(action, -1.0, 1.0)
        target = np.clip(self.ctl.ee_pos + self.action_scale * action[:3], WORKSPACE[0], WORKSPACE[1])
        self.ctl.move_ee(target, DOWN)
        if self.has_gripper_action:
            self.ctl.set_gripper(0.04 * (1.0 - action[3]))  # -1: 0.08 m open, +1: closed
        for _ in range(self.substeps):
            mujoco.mj_step(self.model, self.data)
        for fn in (mujoco.mj_kinematics, mujoco.mj_comPos, mujoco.mj_camlight):  # positions for obs, IK, rendering
            fn(self.model, self.data)
        reward, success, info = self._evaluate()
        reward += self.success_bonus * success
        terminated = bool(success and self.terminate_on_success)
        return self._obs(), float(reward), terminated, False, {**info, "is_success": success}

    def render(self) -> Optional[np.ndarray]:
        """RGB frame (height, width, 3) uint8 from ``camera`` when render_mode is rgb_array."""
        if self.render_mode != "rgb_array":
            return None
        return self._render(self.render_size, self._render_option)

    def close(self) -> None:
        """Free the offscreen renderers (their GL contexts)."""
        for r in self._renderers.values():
            r.close()
        self._renderers = {}

    # --- helpers ---------------------------------------------------------------------------
    def _render(self, size: Tuple[int, int], option: mujoco.MjvOption) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._renderers[size] = mujoco.Renderer(self.model, height=size[1], width=size[0])
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        renderer.update_scene(self.data, camera=self.camera, scene_option=option)
        return renderer.render()

    def _state(self) -> np.ndarray:
        robot = np.concatenate([self.ctl.ee_pos, self.ctl.ee_velocity(), [self.ctl.gripper_width]])
        return np.concatenate([robot, self._task_state()]).astype(np.float32)

    def _obs(self):
        if self.obs_mode == "state":
            return self._state()
        obs = {"pixels": self._render(self.image_size, self._pixel_option)}
        if self.obs_mode == "pixels+state":
            obs["state"] = self._state()
        return obs

    @property
    def goal_pos(self) -> np.ndarray:
        """Goal position (3,), m."""
        return self.data.mocap_pos[self.goal_mocap].copy()

    def _set_goal(self, pos: np.ndarray) -> None:
        self.data.mocap_pos[self.goal_mocap] = pos


class FrankaReachEnv(FrankaEnv):
    """Move the TCP to a goal in the air. State: ee pos (3), ee vel (3), gripper width (1),
    goal (3), goal - ee (3). Reward: -|ee - goal| (+ bonus); success: |ee - goal| < threshold."""

    goal_low, goal_high = np.array([0.30, -0.25, 0.05]), np.array([0.65, 0.25, 0.40])

    def _sample_task(self) -> None:
        self._set_goal(self.np_random.uniform(self.goal_low, self.goal_high))

    def _task_state(self) -> np.ndarray:
        goal = self.goal_pos
        return np.concatenate([goal, goal - self.ctl.ee_pos])

    def _evaluate(self):
        ee, goal = self.ctl.ee_pos, self.goal_pos
        dist = float(np.linalg.norm(ee - goal))
        return -dist, dist < self.success_threshold, {"ee_pos": ee, "goal_pos": goal, "dist_ee_goal": dist}


class _CubeTask(FrankaEnv):
    """A cube on the table (half-size 0.025 m) to bring to the goal. State adds: cube pos (3),
    cube - ee (3), cube linear velocity (3), goal (3), goal - cube (3)."""

    object_low, object_high = np.array([0.40, -0.15]), np.array([0.60, 0.15])
    reach_weight = 0.5

    def __init__(self, scene: Optional[SceneConfig] = None, **kwargs) -> None:
        super().__init__(scene=scene or SceneConfig(object=True), **kwargs)

    def _setup(self) -> None:
        self.object_qpos = self.model.joint("object").qposadr[0]
        self.object_dof = self.model.joint("object").dofadr[0]
        self.half = float(self.model.geom("object").size[0])

    @property
    def object_pos(self) -> np.ndarray:
        """Cube centre (3,), m."""
        return self.data.qpos[self.object_qpos:self.object_qpos + 3].copy()

    def _place_object(self, xy: np.ndarray) -> None:
        self.data.qpos[self.object_qpos:self.object_qpos + 7] = [xy[0], xy[1], self.half, 1, 0, 0, 0]
        self.data.qvel[self.object_dof:self.object_dof + 6] = 0.0

    def _task_state(self) -> np.ndarray:
        obj, goal = self.object_pos, self.goal_pos
        vel = self.data.qvel[self.object_dof:self.object_dof + 3]
        return np.concatenate([obj, obj - self.ctl.ee_pos, vel, goal, goal - obj])

    def _evaluate(self):
        ee, obj, goal = self.ctl.ee_pos, self.object_pos, self.goal_pos
        d_reach, d_goal = float(np.linalg.norm(ee - obj)), float(np.linalg.norm(obj - goal))
        info = {"ee_pos": ee, "object_pos": obj, "goal_pos": goal, "dist_ee_object": d_reach, "dist_object_goal": d_goal}
        return -self.reach_weight * d_reach - d_goal, d_goal < self.success_threshold, info


class FrankaPushEnv(_CubeTask):
    """Push the cube to a goal on the table with closed fingers, optionally keeping it clear of
    a forbidden zone: a disc of ``zone_radius`` m centred near the midpoint of the straight
    start-goal path (offset sideways by up to ``zone_offset`` m), so the direct push crosses it.
    ``info["in_forbidden_zone"]``: the cube's centre is within the disc (xy). The reward ignores
    the zone unless ``zone_penalty`` > 0 (subtracted per step in the zone). With the zone on,
    the state ends with its centre (x, y). Reward: -0.5 |ee - cube| - |cube - goal| (+ bonus).
    """

    start_tcp = np.array([0.35, 0.0, 0.12])
    gripper_width = 0.0

    def __init__(self, forbidden_zone: bool = True, zone_radius: float = 0.04, zone_offset: float = 0.02,
                 zone_penalty: float = 0.0, goal_distance: Tuple[float, float] = (0.12, 0.20), **kwargs) -> None:
        if not 0 < goal_distance[0] <= goal_distance[1] or zone_radius <= 0 or zone_offset < 0:
            raise ValueError("goal_distance must be 0 < min <= max, zone_radius > 0, zone_offset >= 0")
        if forbidden_zone and goal_distance[0] / 2 <= zone_radius:
            raise ValueError("with a forbidden zone, goal_distance[0] / 2 must exceed zone_radius (else the cube starts in it)")
        self.forbidden_zone, self.zone_radius, self.zone_offset = forbidden_zone, float(zone_radius), float(zone_offset)
        self.zone_penalty, self.goal_distance = float(zone_penalty), tuple(goal_distance)
        scene = SceneConfig(object=True, goal_shape="disc", goal_size=0.03, forbidden_zone=forbidden_zone,
                            zone_radius=zone_radius)
        super().__init__(scene=scene, **kwargs)

    @property
    def zone_center(self) -> Optional[np.ndarray]:
        """Forbidden-zone centre (2,) on the table (m), or None without a zone."""
        if not self.forbidden_zone:
            return None
        return self.data.mocap_pos[self.model.body("zone").mocapid[0], :2].copy()

    def _sample_task(self) -> None:
        rng, table = self.np_random, (np.array([0.35, -0.25]), np.array([0.70, 0.25]))
        start = rng.uniform(self.object_low, self.object_high)
        for _ in range(100):
            angle, dist = rng.uniform(-np.pi, np.pi), rng.uniform(*self.goal_distance)
            goal = start + dist * np.array([np.cos(angle), np.sin(angle)])
            if np.all(goal >= table[0]) and np.all(goal <= table[1]):
                break
        else:
            goal = np.clip(goal, table[0], table[1])
        self._place_object(start)
        self._set_goal([goal[0], goal[1], self.half])
        if self.forbidden_zone:
            path = goal - start
            side = np.array([-path[1], path[0]]) / np.linalg.norm(path)
            centre = (start + goal) / 2 + side * rng.uniform(-self.zone_offset, self.zone_offset)
            self.data.mocap_pos[self.model.body("zone").mocapid[0]] = [centre[0], centre[1], 0.0009]

    def _task_state(self) -> np.ndarray:
        state = super()._task_state()
        return state if not self.forbidden_zone else np.concatenate([state, self.zone_center])

    def _evaluate(self):
        reward, success, info = super()._evaluate()
        inside = bool(self.forbidden_zone and np.linalg.norm(info["object_pos"][:2] - self.zone_center) < self.zone_radius)
        return reward - self.zone_penalty * inside, success, {**info, "in_forbidden_zone": inside}


class FrankaPickPlaceEnv(_CubeTask):
    """Grasp the cube and bring it to a goal up to 0.2 m above the table. Action adds the
    finger command (-1 open ... +1 closed). Reward: -0.5 |ee - cube| - |cube - goal| (+ bonus)."""

    start_tcp = np.array([0.45, 0.0, 0.20])
    has_gripper_action = True

    def _sample_task(self) -> None:
        rng = self.np_random
        self._place_object(rng.uniform(self.object_low, self.object_high))
        goal_xy = rng.uniform(self.object_low, self.object_high)
        self._set_goal([goal_xy[0], goal_xy[1], self.half + rng.uniform(0.0, 0.2)])


def _register() -> None:
    for name, cls, steps in (("FrankaReach-v0", "FrankaReachEnv", 50), ("FrankaPush-v0", "FrankaPushEnv", 100),
                             ("FrankaPickPlace-v0", "FrankaPickPlaceEnv", 100)):
        if f"workbench/{name}" not in gym.registry:
            gym.register(id=f"workbench/{name}", entry_point=f"envs.franka:{cls}", max_episode_steps=steps)


_register()
