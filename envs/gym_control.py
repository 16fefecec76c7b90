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
from envs.video_reward import VideoReward, VideoRewardConfig
from workbench.batch import Batch
from workbench.environment import Environment, EnvSpec
from workbench.registry import ConfigError, ENVS


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


def _success(final_info: Dict[str, Any], i: int) -> float:
    """Env ``i``'s ``is_success`` from a vector env's batched final infos (1.0 / 0.0), NaN when
    the env does not report one."""
    if "is_success" not in final_info or not final_info.get("_is_success", np.ones(i + 1, bool))[i]:
        return math.nan
    return float(final_info["is_success"][i])


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


def _stack(items: List[Any]) -> Any:
    """Per-env observations (arrays, or dicts of arrays) -> one batch [E, ...] (or a dict of them)."""
    if isinstance(items[0], dict):
        return {k: np.stack([o[k] for o in items]) for k in items[0]}
    return np.stack(items)


def _copy(obs: Any) -> Any:
    """A copy of a batch of observations: an array or a dict of arrays."""
    return {k: np.array(v) for k, v in obs.items()} if isinstance(obs, dict) else np.array(obs)


class ReturnScaler:
    """Divides rewards by the running std of the discounted return (NormalizeReward), in numpy."""

    def __init__(self, num_envs: int, gamma: float, clip: float, epsilon: float = 1e-8) -> None:
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon
        self.returns = np.zeros(num_envs)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def _update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = x.mean(), x.var(), x.size
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards, dones: [T, E] in time order; returns scaled [T, E]."""
        out = np.empty_like(rewards)
        for t in range(rewards.shape[0]):
            self.returns = self.returns * self.gamma + rewards[t]
            self._update(self.returns)
            out[t] = rewards[t] / math.sqrt(self.var + self.epsilon)
            self.returns[dones[t]] = 0.0
        return np.clip(out, -self.clip, self.clip) if self.clip else out

    def state_dict(self) -> Dict[str, Any]:
        return {"returns": self.returns.copy(), "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, s: Dict[str, Any]) -> None:
        self.returns = np.asarray(s["returns"], dtype=np.float64).copy()
        self.mean, self.var, self.count = float(s["mean"]), float(s["var"]), float(s["count"])


@ENVS.register("gym_control")
class GymControlEnv(Environment):
    renders = True  # evaluation can write a video
    @dataclass
    class Config:
        name: str = "gym_control"
        id: str = "HalfCheetah-v5"  # any gymnasium id with a Box action space
        num_envs: int = 1
        vectorization: str = "sync"  # sync | async (async pays off only for expensive steps)
        async_context: Optional[str] = None  # async start method: fork | forkserver | spawn; null: forkserver with
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
            if self.vectorization not in ("sync", "async"):
                raise ConfigError(f"env.vectorization={self.vectorization!r} is not valid; valid choices: sync, async")
            if self.async_context not in (None, "fork", "forkserver", "spawn"):
                raise ConfigError(f"env.async_context={self.async_context!r} is not valid; valid choices: fork, forkserver, spawn")
            if self.num_envs < 1 or self.rollout_steps < 1 or self.frame_stack < 1:
                raise ConfigError("env.num_envs, env.rollout_steps and env.frame_stack must be >= 1")
            if self.pixels.width < 0 or self.pixels.height < 0:
                raise ConfigError("env.pixels.width and env.pixels.height must be >= 0")

    def __init__(self, cfg: "GymControlEnv.Config", seed: int, gamma: float = 0.99) -> None:
        if cfg.id not in gym.registry:
            close = [k for k in gym.registry if cfg.id.split("-")[0].lower() in k.lower()][:8]
            raise ConfigError(f"unknown gymnasium env id '{cfg.id}'" + (f"; similar: {', '.join(close)}" if close else ""))
        self.cfg, self.seed, self.gamma = cfg, seed, gamma
        self.video_reward = VideoReward(cfg.video_reward) if cfg.video_reward.name else None
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
                self.obs, _ = self.vec.reset(seed=seed)
            for w in caught:  # it worked: pass on what the envs had to say
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except Exception as e:  # an env option that only fails once the env runs (a bad value type)
            self.vec.close()
            if not cfg.kwargs or isinstance(e, ConfigError):
                raise
            raise bad_options(cfg.id, dict(cfg.kwargs), e) from None
        self.steps_per_collect = cfg.num_envs * cfg.rollout_steps
        self.scaler = ReturnScaler(cfg.num_envs, cfg.reward_gamma, cfg.clip_reward) if cfg.normalize_reward else None
        self.ep_return = np.zeros(cfg.num_envs)
        self.ep_length = np.zeros(cfg.num_envs, dtype=np.int64)
        self.finished: List[tuple] = []
        self.frames: List[np.ndarray] = []  # this rollout's rendered frames [E, H, W, 3] (video_reward)
        self._metrics: Dict[str, float] = {}

    def spec(self) -> EnvSpec:
        space = self.vec.single_observation_space
        shape = space["pixels"].shape if isinstance(space, gym.spaces.Dict) else space.shape
        return EnvSpec(shape, int(np.prod(self.low.shape)), self.low, self.high, observation_space=space)

    def collect(self, policy) -> Batch:
        T, E = self.cfg.rollout_steps, self.cfg.num_envs
        dev = policy.device
        inputs: Dict[str, torch.Tensor] = {}  # [T, E, ...] what the policy saw: "obs", or "pixels" (uint8) and "state"
        act_buf = torch.empty(T, E, self.low.shape[0], device=dev)
        logp_buf = torch.empty(T, E, device=dev)
        val_buf = torch.empty(T + 1, E, device=dev)
        rewards = np.empty((T, E))
        dones = np.zeros((T, E), dtype=bool)
        truncs = np.zeros((T, E), dtype=bool)
        final_values = torch.zeros(T, E, device=dev)
        obs = self.obs
        self.frames = []
        for t in range(T):
            if self.video_reward is not None and self.video_reward.wants_frame(t):
                self.frames.append(np.stack(self.vec.call("render")))  # the state this step acts in
            out = policy.act(obs)
            actions = out.actions.cpu().numpy()
            obs, reward, term, trunc, info = self.vec.step(np.clip(actions, self.low, self.high))
            seen = out.obs if isinstance(out.obs, dict) else {"obs": out.obs}
            if t == 0:
                inputs = {k: torch.empty(T, *v.shape, dtype=v.dtype, device=dev) for k, v in seen.items()}
            for k, v in seen.items():
                inputs[k][t] = v
            act_buf[t], logp_buf[t], val_buf[t] = out.actions, out.logp, out.values
            rewards[t] = reward
            done = term | trunc
            dones[t], truncs[t] = done, trunc & ~term
            self.ep_return += reward
            self.ep_length += 1
            if done.any():
                final_info = info.get("final_info", {})
                for i in np.flatnonzero(done):
                    self.finished.append((self.ep_return[i], self.ep_length[i], _success(final_info, i)))
                self.ep_return[done] = 0.0
                self.ep_length[done] = 0
                if truncs[t].any():
                    idx = np.flatnonzero(truncs[t])
                    final = _stack([info["final_obs"][i] for i in idx])
                    final_values[t, torch.as_tensor(idx, device=dev)] = policy.value_of(final)
        self.obs = obs
        val_buf[T] = policy.value_of(obs)
        next_values = torch.where(torch.as_tensor(truncs, device=dev), final_values, val_buf[1:])
        tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev).T.contiguous()  # noqa: E731
        return Batch(
            logp_old=logp_buf.T.contiguous(),
            mask=torch.ones(E, T, device=dev),
            rewards=tensor(rewards),
            dones=tensor(dones),
            truncated=tensor(truncs),
            values=val_buf[:T].T.contiguous(),
            next_values=next_values.T.contiguous(),
            policy_inputs={k: v.transpose(0, 1).contiguous() for k, v in {**inputs, "actions": act_buf}.items()},
        )

    def score(self, batch: Batch) -> Batch:
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
        if not self.finished:
            return metrics
        returns, lengths, successes = (np.array(x, dtype=np.float64) for x in zip(*self.finished))
        self.finished = []
        metrics.update({"episode/return": float(returns.mean()), "episode/length": float(lengths.mean()),
                        "episode/count": float(len(returns))})
        if not np.isnan(successes).all():  # the env reports info["is_success"] at episode end
            metrics["episode/success"] = float(np.nanmean(successes))
        return metrics

    @torch.no_grad()
    def evaluate(self, policy, episodes: int, video_path: Optional[str] = None, seed: Optional[int] = None) -> Dict[str, float]:
        """Deterministic (mean-action) returns over ``episodes`` fresh episodes, frozen obs stats."""
        render = video_path is not None
        env = make_env(self.cfg.id, 0, dict(self.cfg.kwargs), render_mode="rgb_array" if render else None,
                       pixels=self.cfg.pixels, frame_stack=self.cfg.frame_stack,
                       **({"width": self.cfg.video_size, "height": self.cfg.video_size} if render else {}))()
        returns, lengths, frames, successes = [], [], [], []
        base_seed = (self.seed if seed is None else seed) + 10_000
        try:
            for ep in range(episodes):
                obs, _ = env.reset(seed=base_seed + ep)
                total, n, done = 0.0, 0, False
                while not done:
                    if render and ep == 0:
                        frames.append(env.render())
                    out = policy.act(_stack([obs]), deterministic=True, update_stats=False)
                    obs, r, term, trunc, info = env.step(np.clip(out.actions[0].cpu().numpy(), self.low, self.high))
                    total, n, done = total + float(r), n + 1, term or trunc
                returns.append(total)
                lengths.append(n)
                if "is_success" in info:
                    successes.append(float(info["is_success"]))
        finally:
            env.close()
        if render and frames:
            from workbench.video import write_mp4

            write_mp4(video_path, frames, fps=int(env.metadata.get("render_fps", 30)))
        metrics = {"eval/return_mean": float(np.mean(returns)), "eval/return_std": float(np.std(returns)),
                   "eval/length_mean": float(np.mean(lengths)), "eval/episodes": float(episodes)}
        if successes:
            metrics["eval/success"] = float(np.mean(successes))
        return metrics

    def state_dict(self) -> Dict[str, Any]:
        return {
            "obs": _copy(self.obs),
            "sims": list(self.vec.call("get_state")),
            "ep_return": self.ep_return.copy(),
            "ep_length": self.ep_length.copy(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.vec.call("set_state", list(state["sims"]))
        self.obs = _copy(state["obs"])
        self.ep_return = np.asarray(state["ep_return"], dtype=np.float64).copy()
        self.ep_length = np.asarray(state["ep_length"], dtype=np.int64).copy()
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def close(self) -> None:
        self.vec.close()
