"""Environment adapters for Workbench; importing this package registers them.

Registered through the ``workbench.plugins`` entry point, so the engine finds them without
importing ``envs`` itself.
"""
from envs import diffusion, franka, gym_control, text  # noqa: F401
