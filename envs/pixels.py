"""Pixel observations for MuJoCo envs: a render as the "pixels" observation, frame stacking.

Used by the gym_control adapter: ``RenderedPixels`` turns any MuJoCo env's offscreen render
into a Dict observation (``env.pixels.width``), ``PixelStack`` makes every "pixels" key
channel-first with the last k frames stacked (``env.frame_stack``). Importing this module
loads triton first, before any GL context exists (see ``_load_triton_before_gl``).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Dict

import gymnasium as gym
import numpy as np

from workbench.registry import ConfigError


def _load_triton_before_gl() -> None:
    """Load triton (if installed) before any GL context exists: its bundled LLVM segfaults when
    it comes after Mesa's (software EGL/OSMesa rendering), e.g. when a timm encoder imports
    torch._dynamo after the env has drawn its first frame. ~0.1 s, once."""
    try:
        import triton  # noqa: F401
    except Exception:  # not installed, or unusable on this machine: nothing to protect
        pass


_load_triton_before_gl()


class PixelStack(gym.Wrapper):
    """Dict observation "pixels" [H, W, C] -> channel-first [k*C, H, W]: the last k frames
    concatenated along channels, oldest first; a reset fills the stack with its frame. Other
    keys ("state") pass through; k = 1 only moves the channels first."""

    def __init__(self, env: gym.Env, k: int) -> None:
        super().__init__(env)
        h, w, c = env.observation_space["pixels"].shape
        self.frames: deque = deque(maxlen=k)
        pixels = gym.spaces.Box(0, 255, (k * c, h, w), np.uint8)
        self.observation_space = gym.spaces.Dict({**env.observation_space.spaces, "pixels": pixels})

    def _observe(self, obs: Dict[str, np.ndarray], fill: bool) -> Dict[str, np.ndarray]:
        frame = np.ascontiguousarray(np.moveaxis(obs["pixels"], -1, 0))  # a copy: renderers may reuse buffers
        for _ in range(self.frames.maxlen if fill else 1):
            self.frames.append(frame)
        return {**obs, "pixels": np.concatenate(self.frames)}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._observe(obs, fill=True), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(obs, fill=False), reward, terminated, truncated, info


@dataclass
class PixelConfig:
    """Pixel observations for any MuJoCo env: its rgb_array render at width x height becomes
    the Dict observation {"pixels": uint8 [H, W, 3], "state": the env's own observation}."""

    width: int = 0  # 0: off (the env's own observations)
    height: int = 0  # 0: same as width
    state: bool = True  # keep the env's observation as "state" beside "pixels"; false: pixels only


class RenderedPixels(gym.ObservationWrapper):
    """A MuJoCo env's offscreen render as observation "pixels" (uint8 [H, W, 3]) beside its own
    observation as "state" (or alone). Drawn with shadows, reflections and multisampling off
    (2-3x faster frames; platform notes), in this env's own GL context, made current for each
    frame: gymnasium's viewer assumes it is the only one, so with several envs in a process
    (vector envs, evaluation envs) frames would land in whichever context was made current
    last, or in none once another env has closed; and its MjrContext, left to the garbage
    collector, would free the GL objects of whichever context is current then."""

    def __init__(self, env: gym.Env, with_state: bool) -> None:
        import mujoco

        super().__init__(env)
        base = env.unwrapped
        if not hasattr(base, "mujoco_renderer"):
            raise ConfigError(f"env.pixels needs a MuJoCo env; {env.spec.id if env.spec else base} is not one")
        base.model.vis.quality.offsamples = 0  # read when the GL context is made, just below
        self.viewer = base.mujoco_renderer._get_viewer("rgb_array")
        flags = self.viewer.scn.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        pixels = gym.spaces.Box(0, 255, (base.mujoco_renderer.height, base.mujoco_renderer.width, 3), np.uint8)
        self.with_state = with_state
        self.observation_space = gym.spaces.Dict({"pixels": pixels, **({"state": env.observation_space} if with_state else {})})

    def observation(self, obs: np.ndarray) -> Dict[str, np.ndarray]:
        self.viewer.make_context_current()
        pixels = self.env.render()
        return {"pixels": pixels, "state": obs} if self.with_state else {"pixels": pixels}

    def close(self) -> None:
        if self.viewer is not None:  # free the MjrContext in its own GL context, then the context
            self.viewer.make_context_current()
            self.viewer.con.free()
            self.viewer = None
        super().close()
