"""Robot descriptions (MJCF and assets) and robot code: kinematics and controllers.

The MuJoCo v5 control tasks bring their own models through gymnasium; robot models of our own
(the Franka Panda) land here.
"""
