"""Joint-space and end-effector control of the Panda in a MuJoCo scene built by
``robots.panda.scene``.

The arm is driven by the model's position servos: every command ends as joint position
targets in ``data.ctrl``. End-effector commands go through one step of differential inverse
kinematics, damped least squares on the TCP site Jacobian (``mujoco.mj_jacSite``):

    dq = J^T (J J^T + lambda^2 I)^-1 e  +  (I - J^+ J) k (q_home - q)

where e stacks the position error (m) and, when an orientation is given, the rotation error
as an axis-angle vector (rad); the second term pulls the redundant seventh degree of freedom
towards the home posture without disturbing the TCP.
"""
from __future__ import annotations

from typing import Optional

import mujoco
import numpy as np

from robots.panda.scene import ARM_ACTUATORS, ARM_JOINTS, FINGER_ACTUATORS, FINGER_JOINTS, GRIPPER_OPEN, HOME_QPOS, TCP_SITE


class PandaController:
    """Reads the Panda's state from ``data`` and writes servo targets into ``data.ctrl``.

    damping: lambda of the damped least squares (m); nullspace_gain: k of the posture term;
    max_joint_step: largest joint change one IK step may command (rad).
    """

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, damping: float = 0.02,
                 nullspace_gain: float = 0.2, max_joint_step: float = 0.25) -> None:
        if damping < 0 or nullspace_gain < 0 or max_joint_step <= 0:
            raise ValueError("damping and nullspace_gain must be >= 0 and max_joint_step > 0")
        self.model, self.data = model, data
        self.damping, self.nullspace_gain, self.max_joint_step = damping, nullspace_gain, max_joint_step
        self.site = model.site(TCP_SITE).id
        self.arm_qpos = np.array([model.joint(n).qposadr[0] for n in ARM_JOINTS])
        self.arm_dof = np.array([model.joint(n).dofadr[0] for n in ARM_JOINTS])
        self.finger_qpos = np.array([model.joint(n).qposadr[0] for n in FINGER_JOINTS])
        self.arm_act = np.array([model.actuator(n).id for n in ARM_ACTUATORS])
        self.finger_act = np.array([model.actuator(n).id for n in FINGER_ACTUATORS])
        self.arm_range = model.actuator_ctrlrange[self.arm_act].T.copy()
        joint_range = np.array([model.joint(n).range for n in ARM_JOINTS]).T
        self.arm_range = np.stack([np.maximum(self.arm_range[0], joint_range[0]), np.minimum(self.arm_range[1], joint_range[1])])
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    # --- state -------------------------------------------------------------------------------
    @property
    def q(self) -> np.ndarray:
        """Arm joint angles (7,), rad."""
        return self.data.qpos[self.arm_qpos].copy()

    @property
    def ee_pos(self) -> np.ndarray:
        """TCP position (3,), m, world frame (as of the last kinematics pass)."""
        return self.data.site_xpos[self.site].copy()

    @property
    def ee_rot(self) -> np.ndarray:
        """TCP orientation, rotation matrix (3, 3), world frame."""
        return self.data.site_xmat[self.site].reshape(3, 3).copy()

    @property
    def gripper_width(self) -> float:
        """Distance between the fingers (m): 0 closed, 0.08 fully open."""
        return float(self.data.qpos[self.finger_qpos].sum())

    def jacobian(self) -> np.ndarray:
        """TCP Jacobian (6, 7) w.r.t. the arm joints: rows linear (m/rad) then angular (rad/rad).
        Needs up-to-date kinematics and ``mj_comPos`` (``mj_forward`` provides both)."""
        mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site)
        return np.vstack([self._jacp, self._jacr])[:, self.arm_dof]

    def ee_velocity(self) -> np.ndarray:
        """TCP linear velocity (3,), m/s, world frame."""
        return self.jacobian()[:3] @ self.data.qvel[self.arm_dof]

    # --- commands ----------------------------------------------------------------------------
    def set_arm_targets(self, q: np.ndarray) -> np.ndarray:
        """Set the 7 arm servo targets (rad), clipped to the joint and control ranges.
        Returns the targets actually set, shape (7,)."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise ValueError(f"arm targets must be 7 finite joint angles, got shape {q.shape}")
        q = np.clip(q, self.arm_range[0], self.arm_range[1])
        self.data.ctrl[self.arm_act] = q
        return q

    def set_gripper(self, width: float) -> float:
        """Command the finger separation in metres (clipped to [0, 0.08]); returns it."""
        width = float(np.clip(width, 0.0, 2 * GRIPPER_OPEN))
        if not np.isfinite(width):
            raise ValueError("gripper width must be finite")
        self.data.ctrl[self.finger_act] = width / 2
        return width

    def open_gripper(self) -> None:
        """Fingers fully open (0.08 m)."""
        self.set_gripper(2 * GRIPPER_OPEN)

    def close_gripper(self) -> None:
        """Fingers closed (they stop on whatever they grasp)."""
        self.set_gripper(0.0)

    def ik_step(self, target_pos: np.ndarray, target_rot: Optional[np.ndarray] = None) -> np.ndarray:
        """One damped-least-squares step from the current configuration towards the TCP
        position ``target_pos`` (3,) m and, if given, orientation ``target_rot`` (3, 3).
        Returns joint position targets (7,) rad; nothing is written to ``data``."""
        target_pos = np.asarray(target_pos, dtype=np.float64)
        if target_pos.shape != (3,) or not np.all(np.isfinite(target_pos)):
            raise ValueError(f"target_pos must be a finite (3,) position, got shape {target_pos.shape}")
        jac = self.jacobian()
        err = target_pos - self.data.site_xpos[self.site]
        if target_rot is None:
            jac = jac[:3]
        else:
            target_rot = np.asarray(target_rot, dtype=np.float64)
            if target_rot.shape != (3, 3):
                raise ValueError(f"target_rot must be a (3, 3) rotation matrix, got shape {target_rot.shape}")
            quat, rotvec = np.zeros(4), np.zeros(3)
            mujoco.mju_mat2Quat(quat, (target_rot @ self.ee_rot.T).ravel())
            mujoco.mju_quat2Vel(rotvec, quat, 1.0)
            err = np.concatenate([err, rotvec])
        jjt = jac @ jac.T + self.damping**2 * np.eye(jac.shape[0])
        dq = jac.T @ np.linalg.solve(jjt, err)
        null = np.eye(7) - np.linalg.pinv(jac) @ jac
        q = self.q
        dq += null @ (self.nullspace_gain * (HOME_QPOS - q))
        dq = np.clip(dq, -self.max_joint_step, self.max_joint_step)
        return np.clip(q + dq, self.arm_range[0], self.arm_range[1])

    def move_ee(self, target_pos: np.ndarray, target_rot: Optional[np.ndarray] = None) -> np.ndarray:
        """``ik_step`` and write the result as servo targets; returns them, shape (7,)."""
        return self.set_arm_targets(self.ik_step(target_pos, target_rot))


def solve_ik(model: mujoco.MjModel, target_pos: np.ndarray, target_rot: Optional[np.ndarray] = None,
             q0: np.ndarray = HOME_QPOS, iters: int = 200, tol: float = 1e-5) -> np.ndarray:
    """Kinematic inverse kinematics: iterate ``ik_step`` on a scratch ``MjData`` (no dynamics)
    from ``q0`` (7,) until the TCP is within ``tol`` metres (and ``tol`` radians) of the target
    pose. Returns the arm joint angles (7,), rad; RuntimeError when it does not converge."""
    data = mujoco.MjData(model)
    ctl = PandaController(model, data, damping=1e-3, max_joint_step=0.1)
    q = np.asarray(q0, dtype=np.float64).copy()
    for _ in range(iters):
        data.qpos[ctl.arm_qpos] = q
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        err = np.linalg.norm(np.asarray(target_pos) - ctl.ee_pos)
        if target_rot is not None:
            err = max(err, np.abs(np.asarray(target_rot) - ctl.ee_rot).max())
        if err < tol:
            return q
        q = ctl.ik_step(target_pos, target_rot)
    raise RuntimeError(f"solve_ik did not reach {np.round(target_pos, 4)} (error {err:.2e} after {iters} iterations)")
