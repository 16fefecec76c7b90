"""``workbench bench ppo-mujoco``: our PPO vs Stable-Baselines3 PPO on a MuJoCo task.

Both run in this process, one after the other, on the same cores with one torch thread, with
matched settings (env count, rollout length, minibatch size, epochs, network, observation
and reward normalisation). The ceiling is the raw rate of the same vector env stepping
random actions. Figures are env steps per second, rollout and update together.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from typing import Dict, List

import numpy as np

from workbench.registry import BENCHMARKS

PROFILES = {
    # CleanRL ppo_continuous_action defaults: 1 env x 2048 steps, 32 minibatches of 64, 10 epochs
    "cleanrl": dict(num_envs=1, rollout_steps=2048, num_minibatches=32, update_epochs=10),
    # a vectorised setting: 8 envs x 256 steps, 4 minibatches of 512, 10 epochs
    "vec8": dict(num_envs=8, rollout_steps=256, num_minibatches=4, update_epochs=10),
}


def raw_env_rate(env_id: str, num_envs: int, steps: int, seed: int = 0) -> float:
    """Env steps/s of the bare vector env under random actions: the ceiling for any trainer."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    vec = SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP)
    vec.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, size=(256, num_envs) + vec.single_action_space.shape).astype(np.float32)
    n = max(1, steps // num_envs)
    start = time.perf_counter()
    for i in range(n):
        vec.step(actions[i % 256])
    rate = n * num_envs / (time.perf_counter() - start)
    vec.close()
    return rate


def ours_rate(env_id: str, profile: Dict, steps: int, seed: int = 0) -> float:
    from workbench.config import compose, validate
    from workbench.runlog import RunLogger
    from workbench.trainer import Trainer

    overrides = [
        "experiment=halfcheetah_ppo", f"env.id={env_id}", f"seed={seed}", f"total_steps={steps}",
        "eval_episodes=0", "eval_every=0", "checkpoint_every=0", "progress=false", "device=cpu",
        f"env.num_envs={profile['num_envs']}", f"env.rollout_steps={profile['rollout_steps']}",
        f"algo.num_minibatches={profile['num_minibatches']}", f"algo.update_epochs={profile['update_epochs']}",
    ]
    run = validate(compose(overrides))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(run, tmp)
        logger = RunLogger(trainer.run_dir, run.total_steps, progress=False, tensorboard=False, display=trainer.env.display())
        logger.log = lambda step, metrics: None  # time the loop, not the console
        trainer.save_checkpoint = lambda: None
        start = time.perf_counter()
        trainer.train(logger, plot=False)
        return trainer.step / (time.perf_counter() - start)


def sb3_rate(env_id: str, profile: Dict, steps: int, seed: int = 0) -> float:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(make_vec_env(env_id, n_envs=profile["num_envs"], seed=seed), gamma=0.99, clip_obs=10.0, clip_reward=10.0)
    batch = profile["num_envs"] * profile["rollout_steps"]
    model = PPO(
        "MlpPolicy", env, n_steps=profile["rollout_steps"], batch_size=batch // profile["num_minibatches"],
        n_epochs=profile["update_epochs"], learning_rate=lambda f: 3e-4 * f, gamma=0.99, gae_lambda=0.95,
        clip_range=0.2, clip_range_vf=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, seed=seed, device="cpu",
        policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh, optimizer_kwargs=dict(eps=1e-5)),
    )
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


@BENCHMARKS.register("ppo-mujoco")
def bench_ppo_mujoco(argv: List[str]) -> Dict:
    parser = argparse.ArgumentParser(prog="workbench bench ppo-mujoco")
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=65536, help="env steps per trainer measurement")
    parser.add_argument("--profiles", default="cleanrl,vec8", help=f"comma list of {', '.join(PROFILES)}")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        raise SystemExit("workbench bench ppo-mujoco needs the peer: pip install -e '.[bench]'")
    figures: Dict = {"bench": "ppo-mujoco", "env": args.env, "steps": args.steps, "torch_threads": 1}
    for name in args.profiles.split(","):
        profile = PROFILES[name]
        steps = max(args.steps, profile["num_envs"] * profile["rollout_steps"])
        raw = raw_env_rate(args.env, profile["num_envs"], steps)
        ours = ours_rate(args.env, profile, steps)
        peer = sb3_rate(args.env, profile, steps)
        row = {"raw_env_steps_per_s": round(raw, 1), "ours_steps_per_s": round(ours, 1), "sb3_steps_per_s": round(peer, 1),
               "ratio": round(ours / peer, 3), "fraction_of_raw": round(ours / raw, 3)}
        figures[name] = row
        print(f"{name:8s} {profile}  raw env {raw:9,.0f}/s  ours {ours:8,.0f}/s  SB3 {peer:8,.0f}/s  "
              f"ratio {ours / peer:5.2f}x  ours/raw {ours / raw:5.1%}", flush=True)
    first = figures[args.profiles.split(",")[0]]
    figures["ratio"] = first["ratio"]
    figures["fraction_of_raw"] = first["fraction_of_raw"]
    return figures
