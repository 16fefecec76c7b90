"""Environment adapters for Workbench, and the benchmarks that need one of them (``mujoco_bench``,
``franka_rapl``);
importing this package registers both.

Registered through the ``workbench.plugins`` entry point, so the engine finds them without
importing ``envs`` itself.
"""
from envs import diffusion, franka, gym_control, mujoco_bench, text  # noqa: F401
from envs import franka_rapl  # noqa: F401  (after franka: its benchmarks run FrankaPush)
