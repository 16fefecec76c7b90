"""The collector of control actors: steps a gymnasium vector env with a ``ControlActor``.

Any env whose policies act on observations (MuJoCo tasks, the Franka Panda, later real-robot
bridges) uses this one loop: it fills the ``Batch`` (what the policy saw, actions, log-probs,
values, raw rewards, dones), bootstraps time-limit truncations with the critic's value of the
final observation (never terminations), and keeps the episode statistics across iterations.
The env adapter keeps everything else: which env is built, its reward shaping and metrics.
This is the seam where a worker boundary (Ray actors stepping remote envs) attaches.

:func:`run_episodes` is the one evaluation loop: deterministic (mean) actions on a single env,
fresh seeded episodes, optional frames for a video.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from workbench.batch import Batch


def stack_observations(items: List[Any]) -> Any:
    """Per-env observations (arrays, or dicts of arrays) -> one batch [E, ...] (or a dict of them)."""
    if isinstance(items[0], dict):
        return {k: np.stack([o[k] for o in items]) for k in items[0]}
    return np.stack(items)


def copy_observations(obs: Any) -> Any:
    """A copy of a batch of observations: an array or a dict of arrays."""
    return {k: np.array(v) for k, v in obs.items()} if isinstance(obs, dict) else np.array(obs)


def episode_success(final_info: Dict[str, Any], i: int) -> float:
    """Env ``i``'s ``is_success`` from a vector env's batched final infos (1.0 / 0.0), NaN when
    the env does not report one."""
    if "is_success" not in final_info or not final_info.get("_is_success", np.ones(i + 1, bool))[i]:
        return math.nan
    return float(final_info["is_success"][i])


class VectorEnvCollector:
    """Fixed-length rollouts of a ``ControlActor`` on a gymnasium vector env (same-step autoreset).

    ``obs`` is the observation the next step acts on; ``finished`` collects (return, length,
    success) of every episode that ended since :meth:`pop_episodes`.
    """

    def __init__(self, vec, first_obs: Any, low: np.ndarray, high: np.ndarray) -> None:
        self.vec, self.obs, self.low, self.high = vec, first_obs, low, high
        self.num_envs = vec.num_envs
        self.ep_return = np.zeros(self.num_envs)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self.finished: List[Tuple[float, int, float]] = []

    def collect(self, policy, steps: int, before_step: Optional[Callable[[int], None]] = None) -> Batch:
        """``steps`` steps of every env -> a Batch of E rows x ``steps`` steps (raw rewards).
        ``before_step(t)`` runs before step t acts (e.g. to render the frame a learned reward sees)."""
        T, E = steps, self.num_envs
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
        for t in range(T):
            if before_step is not None:
                before_step(t)
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
                    self.finished.append((self.ep_return[i], self.ep_length[i], episode_success(final_info, i)))
                self.ep_return[done] = 0.0
                self.ep_length[done] = 0
                if truncs[t].any():
                    idx = np.flatnonzero(truncs[t])
                    final = stack_observations([info["final_obs"][i] for i in idx])
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

    def pop_episodes(self) -> Dict[str, float]:
        """episode/return, length, count (and success where the env reports it) since the last call."""
        if not self.finished:
            return {}
        returns, lengths, successes = (np.array(x, dtype=np.float64) for x in zip(*self.finished))
        self.finished = []
        metrics = {"episode/return": float(returns.mean()), "episode/length": float(lengths.mean()),
                   "episode/count": float(len(returns))}
        if not np.isnan(successes).all():  # the env reports info["is_success"] at episode end
            metrics["episode/success"] = float(np.nanmean(successes))
        return metrics

    def state_dict(self) -> Dict[str, Any]:
        return {"obs": copy_observations(self.obs), "ep_return": self.ep_return.copy(), "ep_length": self.ep_length.copy()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.obs = copy_observations(state["obs"])
        self.ep_return = np.asarray(state["ep_return"], dtype=np.float64).copy()
        self.ep_length = np.asarray(state["ep_length"], dtype=np.int64).copy()


@torch.no_grad()
def run_episodes(policy, env, episodes: int, base_seed: int, low: np.ndarray, high: np.ndarray,
                 record_first: bool = False,
                 score_episode: Optional[Callable[[List[Dict[str, Any]]], Dict[str, float]]] = None,
                 ) -> Tuple[Dict[str, float], List[np.ndarray]]:
    """Deterministic (mean-action) episodes of a single gymnasium env, seeds ``base_seed + k``,
    with frozen observation statistics. Returns (eval/* metrics, the first episode's frames when
    ``record_first``). ``score_episode(infos)`` (the reset info and every step's info) adds its
    own per-episode figures as ``eval/<name>`` (mean) and ``eval/<name>_std``, e.g. a simulated
    human's score of the episode."""
    returns, lengths, frames, successes = [], [], [], []
    extra: Dict[str, List[float]] = {}
    for ep in range(episodes):
        obs, info = env.reset(seed=base_seed + ep)
        infos = [info]
        total, n, done = 0.0, 0, False
        while not done:
            if record_first and ep == 0:
                frames.append(env.render())
            out = policy.act(stack_observations([obs]), deterministic=True, update_stats=False)
            obs, r, term, trunc, info = env.step(np.clip(out.actions[0].cpu().numpy(), low, high))
            if score_episode is not None:
                infos.append(info)
            total, n, done = total + float(r), n + 1, term or trunc
        returns.append(total)
        lengths.append(n)
        if "is_success" in info:
            successes.append(float(info["is_success"]))
        if score_episode is not None:
            for key, value in score_episode(infos).items():
                extra.setdefault(key, []).append(float(value))
    metrics = {"eval/return_mean": float(np.mean(returns)), "eval/return_std": float(np.std(returns)),
               "eval/length_mean": float(np.mean(lengths)), "eval/episodes": float(episodes)}
    if successes:
        metrics["eval/success"] = float(np.mean(successes))
    for key, values in extra.items():
        metrics[f"eval/{key}"], metrics[f"eval/{key}_std"] = float(np.mean(values)), float(np.std(values))
    return metrics, frames
