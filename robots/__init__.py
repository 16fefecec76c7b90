"""Robot descriptions (MJCF and assets) and robot code: kinematics and controllers.

The MuJoCo v5 control tasks bring their own models through gymnasium; ``robots.panda`` is the
Franka Panda (MJCF and meshes from the installed gymnasium-robotics package, Apache-2.0) with
its scene builder, forward kinematics and differential-IK control, used by ``envs/franka.py``.
"""
