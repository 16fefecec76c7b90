"""Gymnasium continuous-control adapter (MuJoCo v5 tasks and any Box-action gymnasium env).

Collects fixed-length rollouts from a sync or async vector env with a Gaussian policy,
bootstraps time-limit truncations with the critic's value of the final observation (never
terminations), scales rewards by the running std of the discounted return (gymnasium's
NormalizeReward / CleanRL), and can save and restore the complete simulator state so that a
resumed run continues bit for bit.

Observations are flat vectors, or Dicts with uint8 "pixels" (and optionally a "state" vector):
from an env that offers them, or rendered from any MuJoCo env (``env.pixels.width=64``). Pixels
reach the policy channel-first with the last ``env.frame_stack`` frames stacked along channels;
collect stores whatever tensors the policy says it saw, per key.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from envs.pixels import PixelConfig, PixelStack, RenderedPixels  # noqa: F401  (PixelConfig: config type)
from workbench.batch import Batch
from workbench.environment import RETURN, EnvDisplay, Environment, EnvSpec, Headline
from workbench.fields import check_choices, choice
from workbench.normalization import RunningMeanStd
from workbench.policies.base import ControlActor
from workbench.registry import ConfigError, ENVS
from workbench.rewards.video import VideoReward, VideoRewardConfig
from workbench.rollout.control import VectorEnvCollector, run_episodes


def _route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to Python logging instead of stdout and a MUJOCO_LOG.TXT in the
    working directory. gymnasium's v5 models use ``settotalmass``, which MuJoCo >= 4 flags as
    deprecated on every env creation: that one goes to debug."""
    import logging

    import mujoco

    log = logging.getLogger("mujoco")
    mujoco.set_mju_user_warning(lambda msg: (log.debug if "settotalmass" in msg else log.warning)(msg))


_route_mujoco_warnings()


class SimState(gym.Wrapper):
    """Exposes get_state/set_state of the whole simulator for exact checkpoint/resume.

    Works through ``VectorEnv.call`` for sync and async vector envs alike: ``set_state`` gets
    every env's state and picks its own by index.
    """

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self.index = index

    def _find(self, cls: type) -> Optional[gym.Wrapper]:
        env = self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, cls):
                return env
            env = env.env
        return None

    def get_state(self) -> Dict[str, Any]:
        base = self.env.unwrapped
        state: Dict[str, Any] = {"rng": base.np_random.bit_generator.state}
        limit, stack = self._find(gym.wrappers.TimeLimit), self._find(PixelStack)
        if limit is not None:
            state["elapsed_steps"] = limit._elapsed_steps
        if stack is not None:
            state["frames"] = np.stack(stack.frames)
        if hasattr(base, "model") and hasattr(base, "data"):
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            sim = np.empty(mujoco.mj_stateSize(base.model, spec))
            mujoco.mj_getState(base.model, base.data, sim, spec)
            state["mujoco"] = sim
        return state

    def set_state(self, states: List[Dict[str, Any]]) -> None:
        state = states[self.index]
        base = self.env.unwrapped
        base.np_random.bit_generator.state = state["rng"]
        limit, stack = self._find(gym.wrappers.TimeLimit), self._find(PixelStack)
        if limit is not None:
            limit._elapsed_steps = state.get("elapsed_steps")
        if stack is not None:
            stack.frames.extend(np.asarray(state["frames"]))
        if "mujoco" in state:
            import mujoco

            mujoco.mj_setState(base.model, base.data, np.asarray(state["mujoco"]), mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(base.model, base.data)


def bad_options(env_id: str, kwargs: Dict[str, Any], e: Exception) -> ConfigError:
    """The one-line error for ``env.kwargs`` an env failed on (at creation or its first reset)."""
    reason = str(e).splitlines()[0] if str(e) else ""
    return ConfigError(f"env.kwargs {kwargs} made env.id={env_id!r} fail ({type(e).__name__}: {reason}); "
                       f"fix or drop the option")


def make_env(env_id: str, index: int, kwargs: Dict[str, Any], render_mode: Optional[str] = None,
             pixels: Optional[PixelConfig] = None, frame_stack: int = 1, **render_kwargs):
    if pixels is not None and pixels.width:  # the render is the observation (and the video)
        render_mode, render_kwargs = "rgb_array", {"width": pixels.width, "height": pixels.height or pixels.width}

    def thunk() -> gym.Env:
        try:
            env = gym.make(env_id, render_mode=render_mode, **kwargs, **render_kwargs)
        except ConfigError:
            raise
        except (gym.error.Error, TypeError) as e:
            if kwargs and isinstance(e, TypeError) and not (pixels is not None and pixels.width):
                raise bad_options(env_id, kwargs, e) from None  # an option name the env does not take
            hint = "; env.pixels needs a MuJoCo env" if pixels is not None and pixels.width else ""
            raise ConfigError(f"env.id={env_id!r}: {e}{hint}") from None
        except Exception as e:  # an option the env accepted by name but cannot use (a bad file, frame_skip=0)
            raise bad_options(env_id, kwargs, e) from None
        if pixels is not None and pixels.width:
            env = RenderedPixels(env, pixels.state)
        if isinstance(env.observation_space, gym.spaces.Dict) and "pixels" in env.observation_space.spaces:
            env = PixelStack(env, frame_stack)
        return SimState(env, index)

    return thunk


class ReturnScaler:
    """Divides rewards by the running std of the discounted return (NormalizeReward), in numpy."""

    def __init__(self, num_envs: int, gamma: float, clip: float, epsilon: float = 1e-8) -> None:
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon
        self.returns = np.zeros(num_envs)
        self.stats = RunningMeanStd(())

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards, dones: [T, E] in time order; returns scaled [T, E]."""
        out = np.empty_like(rewards)
        for t in range(rewards.shape[0]):
            self.returns = self.returns * self.gamma + rewards[t]
            self.stats.update(self.returns)
            out[t] = rewards[t] / math.sqrt(self.stats.var + self.epsilon)
            self.returns[dones[t]] = 0.0
        return np.clip(out, -self.clip, self.clip) if self.clip else out

    def state_dict(self) -> Dict[str, Any]:
        return {"returns": self.returns.copy(), **self.stats.state_dict()}

    def load_state_dict(self, s: Dict[str, Any]) -> None:
        self.returns = np.asarray(s["returns"], dtype=np.float64).copy()
        self.stats.load_state_dict(s)


@ENVS.register("gym_control")
class GymControlEnv(Environment):
    policy_contract = ControlActor
    @dataclass
    class Config:
        name: str = "gym_control"
        id: str = "HalfCheetah-v5"  # any gymnasium id with a Box action space
        num_envs: int = 1
        vectorization: str = choice("sync", "async")  # async pays off only for expensive steps)
        async_context: Optional[str] = choice(None, "fork", "forkserver", "spawn")  # async start method; null: forkserver with
        # env.pixels, else fork (gymnasium builds one env in this process first: forked after a GL context, workers hang)
        rollout_steps: int = 2048  # steps per env per iteration
        normalize_reward: bool = True
        reward_gamma: float = 0.99  # discount of the return whose std scales rewards
        clip_reward: float = 10.0
        video_size: int = 240  # pixels of evaluation videos (software rendering is slow on CPU); pixel envs: their own size
        kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make
        pixels: PixelConfig = field(default_factory=PixelConfig)  # env.pixels.width=64: rendered pixel observations
        frame_stack: int = 1  # pixel observations: the last k frames, stacked along channels
        video_reward: VideoRewardConfig = field(default_factory=VideoRewardConfig)  # a learned reward on episode videos (RAPL)

        def __post_init__(self) -> None:
            check_choices(self, "env")
            if self.num_envs < 1 or self.rollout_steps < 1 or self.frame_stack < 1:
                raise ConfigError("env.num_envs, env.rollout_steps and env.frame_stack must be >= 1")
            if self.pixels.width < 0 or self.pixels.height < 0:
                raise ConfigError("env.pixels.width and env.pixels.height must be >= 0")

    def __init__(self, cfg: "GymControlEnv.Config", seed: int) -> None:
        if cfg.id not in gym.registry:
            close = [k for k in gym.registry if cfg.id.split("-")[0].lower() in k.lower()][:8]
            raise ConfigError(f"unknown gymnasium env id '{cfg.id}'" + (f"; similar: {', '.join(close)}" if close else ""))
        self.cfg, self.seed = cfg, seed
        self.video_reward = VideoReward(cfg.video_reward) if cfg.video_reward.enabled else None
        render_mode = "rgb_array" if self.video_reward else None  # the learned reward watches the training episodes
        fns = [make_env(cfg.id, i, dict(cfg.kwargs), render_mode=render_mode, pixels=cfg.pixels, frame_stack=cfg.frame_stack)
               for i in range(cfg.num_envs)]
        if cfg.vectorization == "sync":
            self.vec = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        else:
            context = cfg.async_context or ("forkserver" if cfg.pixels.width else None)
            self.vec = AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, context=context)
        obs_space = self.vec.single_observation_space
        if isinstance(obs_space, gym.spaces.Dict) and "pixels" not in obs_space.spaces:
            self.vec.close()
            raise ConfigError(f"env '{cfg.id}' has Dict observations {list(obs_space.spaces)}; gym_control reads 'pixels' and 'state'")
        space = self.vec.single_action_space
        if not isinstance(space, gym.spaces.Box):
            raise ConfigError(f"env '{cfg.id}' has action space {space}; gym_control needs a Box")
        self.low, self.high = space.low, space.high
        try:
            with warnings.catch_warnings(record=True) as caught:  # async workers report errors as warnings
                warnings.simplefilter("always")
                first_obs, _ = self.vec.reset(seed=seed)
            for w in caught:  # it worked: pass on what the envs had to say
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except Exception as e:  # an env option that only fails once the env runs (a bad value type)
            self.vec.close()
            if not cfg.kwargs or isinstance(e, ConfigError):
                raise
            raise bad_options(cfg.id, dict(cfg.kwargs), e) from None
        self.steps_per_collect = cfg.num_envs * cfg.rollout_steps
        self.scaler = ReturnScaler(cfg.num_envs, cfg.reward_gamma, cfg.clip_reward) if cfg.normalize_reward else None
        self.collector = VectorEnvCollector(self.vec, first_obs, self.low, self.high)  # the one stepping loop
        self.frames: List[np.ndarray] = []  # this rollout's rendered frames [E, H, W, 3] (video_reward)
        self._metrics: Dict[str, float] = {}

    def spec(self) -> EnvSpec:
        space = self.vec.single_observation_space
        shape = space["pixels"].shape if isinstance(space, gym.spaces.Dict) else space.shape
        return EnvSpec(shape, int(np.prod(self.low.shape)), self.low, self.high, observation_space=space)

    def collect(self, policy) -> Batch:
        self.frames = []

        def record_frame(t: int) -> None:  # the learned reward watches the state step t acts in
            if self.video_reward.wants_frame(t):
                self.frames.append(np.stack(self.vec.call("render")))

        return self.collector.collect(policy, self.cfg.rollout_steps,
                                      before_step=record_frame if self.video_reward is not None else None)

    def assign_rewards(self, batch: Batch) -> Batch:
        if self.video_reward is None and self.scaler is None:
            return batch
        raw = batch.rewards.T.cpu().numpy().astype(np.float64)
        dones = batch.dones.T.cpu().numpy() > 0
        if self.video_reward is not None:
            raw, metrics = self.video_reward(self.frames, raw, dones)
            self._metrics.update(metrics)
            batch = batch.with_(rewards=torch.as_tensor(raw.T, dtype=torch.float32, device=batch.rewards.device))
        if self.scaler is None:
            return batch
        scaled = self.scaler(raw, dones)
        return batch.with_(rewards=torch.as_tensor(scaled.T, dtype=torch.float32, device=batch.rewards.device))

    def pop_metrics(self) -> Dict[str, float]:
        metrics, self._metrics = self._metrics, {}
        metrics.update(self.collector.pop_episodes())
        return metrics

    def display(self) -> EnvDisplay:
        """Return, and the success rate of tasks that report ``info["is_success"]``; evaluation can film."""
        success = Headline("success", "eval/success", "episode/success", fmt=".0%")
        return EnvDisplay(name=self.cfg.id, headline=(RETURN, success), renders=True, evaluation="deterministic")

    @torch.no_grad()
    def evaluate(self, policy, episodes: int, video_path: Optional[str] = None, seed: Optional[int] = None) -> Dict[str, float]:
        """Deterministic (mean-action) returns over ``episodes`` fresh episodes, frozen obs stats."""
        render = video_path is not None
        env = make_env(self.cfg.id, 0, dict(self.cfg.kwargs), render_mode="rgb_array" if render else None,
                       pixels=self.cfg.pixels, frame_stack=self.cfg.frame_stack,
                       **({"width": self.cfg.video_size, "height": self.cfg.video_size} if render else {}))()
        base_seed = (self.seed if seed is None else seed) + 10_000
        try:
            metrics, frames = run_episodes(policy, env, episodes, base_seed, self.low, self.high, record_first=render)
        finally:
            env.close()
        if render and frames:
            from workbench.video import write_mp4

            write_mp4(video_path, frames, fps=int(env.metadata.get("render_fps", 30)))
        return metrics

    def state_dict(self) -> Dict[str, Any]:
        return {
            **self.collector.state_dict(),  # obs, ep_return, ep_length
            "sims": list(self.vec.call("get_state")),
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.vec.call("set_state", list(state["sims"]))
        self.collector.load_state_dict(state)
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def close(self) -> None:
        self.vec.close()
