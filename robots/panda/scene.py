"""MJCF scene around the Franka Panda: a table, an optional cube, a goal, an optional
forbidden zone and three cameras (front, top, side), generated as an XML string and compiled with MuJoCo.

The arm stands at the world origin on the table top (z = 0); the workspace lies in front of it
(+x). The goal and the forbidden zone are mocap bodies, so their positions are part of the
MuJoCo state (``mj_getState``) and a checkpoint restores them with the rest of the simulator.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Tuple
from xml.sax.saxutils import quoteattr

import mujoco
import numpy as np

from robots.panda.assets import franka_assets_dir, panda_chain_xml

# Elbow up, hand pointing straight down, fingers opening along world y, TCP at (0.45, 0, 0.25).
HOME_QPOS = np.array([0.0, -0.224, 0.0, -2.467, 0.0, 0.673, 0.0])
GRIPPER_OPEN = 0.04  # m per finger (width 0.08 m)
ARM_JOINTS = tuple(f"robot:panda0_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("robot:panda0_finger_joint1", "robot:panda0_finger_joint2")
ARM_ACTUATORS = tuple(f"panda0_joint{i}" for i in range(1, 8))
FINGER_ACTUATORS = ("r_gripper_finger_joint", "l_gripper_finger_joint")
TCP_SITE = "tcp"
DETAILED_GROUP, COARSE_GROUP = 2, 4  # geom groups of the arm's visual meshes and of its low-poly collision meshes


@dataclass
class SceneConfig:
    """What the scene holds. Lengths in metres, time in seconds.

    object: add a cube with a free joint (body and geom ``object``) of half-size ``object_size``.
    goal_shape: ``sphere`` (a goal in the air) or ``disc`` (drawn on the table: the goal body
    marks where the cube's centre should be, the disc lies ``object_size`` below it).
    forbidden_zone: add a red disc (mocap body ``zone``) of radius ``zone_radius`` on the table.
    timestep: physics step; offscreen_size: largest offscreen image (width, height) that will
    be rendered (MuJoCo's offscreen buffer is sized at compile time).
    tuned_servos: less damped arm joints (``tune_servos``) so that the hand follows
    end-effector commands faster; False keeps the package's values.
    """

    object: bool = False
    object_size: float = 0.025
    object_mass: float = 0.1
    goal_shape: str = "sphere"
    goal_size: float = 0.02
    forbidden_zone: bool = False
    zone_radius: float = 0.05
    timestep: float = 0.004
    offscreen_size: Tuple[int, int] = (640, 480)
    tuned_servos: bool = True

    def __post_init__(self) -> None:
        if self.goal_shape not in ("sphere", "disc"):
            raise ValueError(f"goal_shape={self.goal_shape!r} is not valid; valid choices: disc, sphere")
        for name in ("object_size", "object_mass", "goal_size", "zone_radius", "timestep"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SceneConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if len(self.offscreen_size) != 2 or min(self.offscreen_size) < 1:
            raise ValueError(f"offscreen_size must be (width, height) >= 1, got {self.offscreen_size!r}")


def look_at(eye: Sequence[float], target: Sequence[float]) -> str:
    """MJCF ``xyaxes`` (6 numbers as a string) of a camera at ``eye`` (3,) looking at ``target``
    (3,) with world +z up. Raises ValueError when the view is vertical or eye == target."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    fwd = target - eye
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    if np.linalg.norm(fwd) < 1e-9 or np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at needs eye != target and a view that is not exactly vertical")
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd / np.linalg.norm(fwd))
    return " ".join(f"{v:.6f}" for v in (*right, *up))


def scene_xml(cfg: SceneConfig = SceneConfig()) -> str:
    """The scene as an MJCF string. The Panda fragments are included by absolute path from the
    installed gymnasium-robotics; the edited body tree is the virtual file ``panda_chain.xml``
    (pass ``{"panda_chain.xml": ...}`` as assets, or use ``build_model``)."""
    root = franka_assets_dir()
    inc = lambda name: quoteattr(os.path.join(root, name))  # noqa: E731
    s = cfg.object_size
    obj = "" if not cfg.object else f"""
    <body name="object" pos="0.5 0 {s}">
      <freejoint name="object"/>
      <geom name="object" type="box" size="{s} {s} {s}" mass="{cfg.object_mass}" rgba="0.15 0.35 0.9 1"
            friction="1 0.005 0.0001" condim="4"/>
    </body>"""
    goal = (f'<site name="goal" type="sphere" size="{cfg.goal_size}" rgba="0.1 0.9 0.2 0.6"/>' if cfg.goal_shape == "sphere"
            else f'<site name="goal" type="cylinder" size="{cfg.goal_size} 0.0008" pos="0 0 {0.0009 - s}" '
                 'rgba="0.1 0.9 0.2 0.8"/>')
    zone = "" if not cfg.forbidden_zone else f"""
    <body name="zone" mocap="true" pos="0.5 0.2 0.0009">
      <site name="zone" type="cylinder" size="{cfg.zone_radius} 0.0008" rgba="0.95 0.1 0.1 0.7"/>
    </body>"""
    w, h = cfg.offscreen_size
    arm = " ".join(f"{v:g}" for v in HOME_QPOS)
    qpos = f"{arm} {GRIPPER_OPEN} {GRIPPER_OPEN}" + (f" 0.5 0 {s} 1 0 0 0" if cfg.object else "")
    return f"""<mujoco model="workbench_panda">
  <include file={inc("assets.xml")}/>
  <compiler meshdir={quoteattr(os.path.join(root, "meshes"))}/>
  <option timestep="{cfg.timestep}" integrator="implicitfast"/>
  <visual>
    <global offwidth="{max(w, 1)}" offheight="{max(h, 1)}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.5 0.45" rgb2="0.5 0.45 0.4" width="64" height="64"/>
    <material name="table" texture="grid" texrepeat="8 8" reflectance="0"/>
  </asset>
  <worldbody>
    <light name="top" pos="0.5 0 1.5" dir="0 0 -1" directional="true" castshadow="false" diffuse="0.5 0.5 0.5"/>
    <geom name="table" type="box" size="0.6 0.7 0.02" pos="0.35 0 -0.02" material="table"/>
    <camera name="front" pos="1.0 0 0.8" xyaxes="{look_at((1.0, 0, 0.8), (0.5, 0, 0.05))}" fovy="45"/>
    <camera name="top" pos="0.5 0 1.1" xyaxes="0 -1 0 1 0 0" fovy="45"/>
    <camera name="side" pos="0.75 0.75 0.65" xyaxes="{look_at((0.75, 0.75, 0.65), (0.5, 0, 0.05))}" fovy="45"/>
    <body name="panda_base" pos="0 0 0">
      <include file="panda_chain.xml"/>
    </body>{obj}
    <body name="goal" mocap="true" pos="0.5 0 0.2">
      {goal}
    </body>{zone}
  </worldbody>
  <include file={inc("actuator.xml")}/>
  <keyframe>
    <key name="home" qpos="{qpos}" ctrl="{arm} {GRIPPER_OPEN} {GRIPPER_OPEN}"/>
  </keyframe>
</mujoco>"""


def build_model(cfg: SceneConfig = SceneConfig()) -> mujoco.MjModel:
    """Compile the scene. Keyframe ``home`` holds the Panda at ``HOME_QPOS`` with open fingers
    (and the cube at (0.5, 0) on the table) with servo targets to match: reset to it with
    ``mujoco.mj_resetDataKeyframe(model, data, 0)``."""
    model = mujoco.MjModel.from_xml_string(scene_xml(cfg), {"panda_chain.xml": panda_chain_xml().encode()})
    model.site_rgba[model.site("end_effector").id, 3] = 0.0  # keep the package's marker out of images
    for g in range(model.ngeom):  # detailed arm meshes -> group 2, low-poly collision meshes -> group 4 (see render_option)
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH:
            mesh = model.mesh(model.geom_dataid[g]).name
            if mesh.endswith("_viz") and mesh != "finger_viz":
                model.geom_group[g] = DETAILED_GROUP
            elif mesh.endswith("_col"):
                model.geom_group[g], model.geom_rgba[g] = COARSE_GROUP, (0.95, 0.99, 0.92, 1.0)
    if cfg.tuned_servos:
        tune_servos(model)
    return model


def render_option(detailed: bool = True) -> mujoco.MjvOption:
    """Visualisation option for ``Renderer.update_scene(..., scene_option=...)``. Detailed: the
    arm's visual meshes (134k triangles). Not detailed: its collision meshes instead (2.3k
    triangles), which look almost the same at 64-84 px and render ~10x faster in software GL."""
    opt = mujoco.MjvOption()
    opt.geomgroup[:] = 0
    opt.geomgroup[[0, 1, DETAILED_GROUP if detailed else COARSE_GROUP]] = 1
    return opt


def tune_servos(model: mujoco.MjModel, kp=(870.0, 120.0), damping=(60.0, 6.0), armature: float = 0.1) -> None:
    """Set the arm's position-servo stiffness ``kp`` (N m/rad) and joint ``damping``
    (N m s/rad) for joints 1-4 and 5-7, and a joint ``armature`` (kg m^2) on all seven, in
    place. The package's damping (100/10, no armature) is heavily overdamped: under repeated
    small TCP steps the hand covers ~26% of each commanded step per 40 ms control step. The
    defaults keep its stiffness and lower the damping: ~40% per step, a fixed target settles to
    5% in 3-8 steps with under 3% rebound. Force limits (87/12 N m) are unchanged."""
    for joints, k, c in ((range(0, 4), kp[0], damping[0]), (range(4, 7), kp[1], damping[1])):
        for i in joints:
            act, dof = model.actuator(ARM_ACTUATORS[i]).id, model.joint(ARM_JOINTS[i]).dofadr[0]
            model.actuator_gainprm[act, 0], model.actuator_biasprm[act, 1] = k, -k
            model.dof_damping[dof], model.dof_armature[dof] = c, armature
