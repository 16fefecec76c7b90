"""Franka Emika Panda for MuJoCo, offline after ``pip install``.

The arm's MJCF fragments (assets.xml, chain.xml, actuator.xml) and STL meshes are those shipped
in the installed ``gymnasium-robotics`` package under
``gymnasium_robotics/envs/assets/kitchen_franka/franka_assets/``. Their headers say they are
modified from https://github.com/vikashplus/franka (Vikash Kumar), licensed under the Apache
License 2.0; gymnasium-robotics itself is MIT. They are found at run time and included by path;
no mesh or model file is copied into this repository.

* ``scene``: ``SceneConfig`` / ``build_model`` — table, optional cube, goal, optional forbidden
  zone, cameras ``front``, ``top`` and ``side``; keyframe ``home``.
* ``kinematics``: ``PandaKinematics`` — our forward kinematics of the TCP from the body tree.
* ``control``: ``PandaController`` — joint targets, gripper, differential IK (damped least
  squares on the ``mj_jacSite`` Jacobian); ``solve_ik`` for a full kinematic solve.
"""
from robots.panda.control import PandaController, solve_ik
from robots.panda.kinematics import PandaKinematics
from robots.panda.scene import HOME_QPOS, SceneConfig, build_model, scene_xml

__all__ = ["HOME_QPOS", "PandaController", "PandaKinematics", "SceneConfig", "build_model", "scene_xml", "solve_ik"]
