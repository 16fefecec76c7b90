"""Forward kinematics of the Panda's tool centre point, computed by our own code from the
compiled model's body tree (not by calling MuJoCo's kinematics).

MuJoCo places a body at ``parent ∘ Trans(body_pos) ∘ Rot(body_quat)`` and then rotates it by
each hinge joint about the joint's axis through the joint's anchor, by the angle ``q - qpos0``.
We replay exactly that chain in numpy, so the result matches ``data.site_xpos`` to rounding
(about 1e-15 m). The published Denavit–Hartenberg parameters of the Panda would not: the
gymnasium-robotics model rounds two frame rotations (``euler='1.57 0 1.57'`` rather than
pi/2), which moves the TCP by up to 0.43 mm over random configurations, and it measures joint 6
from a different zero than Franka's documentation.
"""
from __future__ import annotations

from typing import List, Tuple

import mujoco
import numpy as np


def quat_to_mat(quat: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of unit quaternions (..., 4) in MuJoCo's (w, x, y, z) order."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def axis_angle_to_mat(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: rotations (..., 3, 3) by ``angle`` (..., radians) about the unit
    ``axis`` (3,)."""
    a = np.asarray(axis, dtype=np.float64)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    s, c = np.sin(angle)[..., None, None], np.cos(angle)[..., None, None]
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


def _mv(mat: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """Batched matrix-vector product: (..., 3, 3) x (..., 3) -> (..., 3)."""
    return np.einsum("...ij,...j->...i", mat, vec)


class PandaKinematics:
    """Forward kinematics from the world to one site (default ``tcp``) through hinge joints.

    Reads the constant frame offsets of the bodies between the world and the site from the
    model once; ``forward`` then needs only the joint angles of that chain (the 7 arm joints
    for the TCP, in chain order, radians).
    """

    def __init__(self, model: mujoco.MjModel, site: str = "tcp") -> None:
        self.site_pos = model.site(site).pos.copy()
        self.site_rot = quat_to_mat(model.site(site).quat)
        body, chain = int(model.site(site).bodyid[0]), []
        while body != 0:
            chain.append(body)
            body = int(model.body_parentid[body])
        self.links: List[Tuple[np.ndarray, np.ndarray, list]] = []  # (pos, rot, [(axis, anchor, qpos0)])
        qposadr = []
        for b in reversed(chain):
            joints = []
            for j in range(model.body_jntadr[b], model.body_jntadr[b] + model.body_jntnum[b]):
                if model.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE:
                    raise ValueError(f"PandaKinematics handles hinge joints only; joint {model.joint(j).name!r} is not one")
                adr = int(model.jnt_qposadr[j])
                joints.append((model.jnt_axis[j].copy(), model.jnt_pos[j].copy(), float(model.qpos0[adr])))
                qposadr.append(adr)
            self.links.append((model.body_pos[b].copy(), quat_to_mat(model.body_quat[b]), joints))
        self.qposadr = np.array(qposadr)  # where the chain's joint angles sit in data.qpos
        self.dof = len(qposadr)

    def forward(self, q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Site position (..., 3) in metres and rotation matrix (..., 3, 3) in the world frame
        for joint angles ``q`` (..., dof) in radians (any leading batch shape)."""
        q = np.asarray(q, dtype=np.float64)
        if q.ndim == 0 or q.shape[-1] != self.dof:
            raise ValueError(f"forward expects joint angles of shape (..., {self.dof}), got {q.shape}")
        batch = q.shape[:-1]
        pos, rot = np.zeros(batch + (3,)), np.broadcast_to(np.eye(3), batch + (3, 3))
        i = 0
        for body_pos, body_rot, joints in self.links:
            pos = pos + _mv(rot, body_pos)
            rot = rot @ body_rot
            for axis, anchor, ref in joints:
                r = axis_angle_to_mat(axis, q[..., i] - ref)
                pos = pos + _mv(rot, anchor - _mv(r, anchor))  # rotate about the anchor, not the body origin
                rot = rot @ r
                i += 1
        return pos + _mv(rot, self.site_pos), rot @ self.site_rot
