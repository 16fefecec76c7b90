"""``workbench bench rapl-align``: PPO on Franka Push trained with the RAPL reward, with the RLHF
baseline's reward and with the task reward, each policy scored by the simulated human.

RAPL's second question (after reward quality, ``workbench bench rapl-franka``): does a policy
trained on the learned visual reward do what the person wanted? Each method trains the same
state-based PPO (``experiment=franka_push_ppo``) for ``--steps`` env steps; the two learned
rewards watch the training episodes through ``env.video_reward`` with the frames the rewards
were trained on (side camera, rendered at 85 px and centre-cropped to 64, every 5th step). The
``task`` row uses the env's own dense reward, which ignores the forbidden zone. Every final
policy then runs ``--eval-episodes`` deterministic episodes on fresh layouts and is scored by
the oracle of ``rapl-franka`` (:func:`~envs.franka_rapl.oracle.oracle_score`:
``-sum dist(cube, goal) - lambda * steps in the zone``), with its success rate and the share of
steps the cube spent in the zone.

Reward checkpoints come from ``workbench bench rapl-franka --out DIR`` (``rapl_b<budget>_s<seed>``
and ``rlhf_b<budget>_s<seed>``): ``--rewards DIR --budget 100 --seed 0``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

from envs.franka_rapl import oracle as oracles
from envs.franka_rapl import pool as pools
from workbench.registry import BENCHMARKS, ConfigError

METHODS = {"rapl": "rapl", "rlhf": "rlhf_video", "task": None}


def _overrides(args, method: str, run_dir: str) -> List[str]:
    size = pools.rendered_size(64)
    overrides = [
        "experiment=franka_push_ppo", f"total_steps={args.steps}", "env.rollout_steps=2000", "progress=false",
        "eval_every=0", "eval_episodes=0", "checkpoint_every=0", "final_video=false", f"threads={args.threads}",
        f"seed={args.seed + 1}", f"run_dir={run_dir}",
    ]
    if METHODS[method]:
        path = os.path.join(args.rewards, f"{method}_b{args.budget}_s{args.seed}.safetensors")
        if not os.path.exists(path):
            raise ConfigError(f"--rewards {args.rewards}: no {os.path.basename(path)}; make it with "
                              f"workbench bench rapl-franka --out {args.rewards}")
        overrides += [f"env.kwargs={{width: {size}, height: {size}, camera: side, fast_render: true}}",
                      f"env.video_reward={{name: {METHODS[method]}, options: {{checkpoint: {path}}}, frame_every: 5, crop: 64}}"]
    return overrides


def oracle_eval(policy, episodes: int, seed: int) -> Dict[str, float]:
    """Deterministic episodes of the trained policy on fresh Push layouts, scored by the oracle."""
    import gymnasium as gym

    from workbench.rollout.control import run_episodes

    def oracle(infos) -> Dict[str, float]:
        return {"oracle_score": oracles.oracle_score(infos), "zone_fraction": float(np.mean([i["in_forbidden_zone"] for i in infos]))}

    env = gym.make("workbench/FrankaPush-v0", forbidden_zone=True)
    try:
        m, _ = run_episodes(policy, env, episodes, seed, env.action_space.low, env.action_space.high, score_episode=oracle)
    finally:
        env.close()
    return {"oracle_score": m["eval/oracle_score"], "oracle_score_std": m["eval/oracle_score_std"],
            "success": m["eval/success"], "zone_fraction": m["eval/zone_fraction"]}


@BENCHMARKS.register("rapl-align")
def bench_rapl_align(argv: List[str]) -> Dict[str, Any]:
    import workbench.plugins

    parser = argparse.ArgumentParser(prog="workbench bench rapl-align")
    parser.add_argument("--rewards", required=True, help="folder of reward checkpoints from `workbench bench rapl-franka --out`")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200_000, help="PPO env steps per method")
    parser.add_argument("--methods", default="rapl,rlhf,task")
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for the runs and results.json (default: a temp folder)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; valid choices: {', '.join(METHODS)}")
    workbench.plugins.load([])
    from workbench.config import compose, validate
    from workbench.trainer import Trainer

    out = args.out or tempfile.mkdtemp(prefix="rapl-align-")
    rows: Dict[str, Dict[str, float]] = {}
    for method in methods:
        t0 = time.perf_counter()
        run = validate(compose(_overrides(args, method, os.path.join(out, method))))
        trainer = Trainer(run, os.path.join(out, method))
        trainer.train()
        rows[method] = {**oracle_eval(trainer.policy, args.eval_episodes, seed=50_000), "train_s": time.perf_counter() - t0}
        r = rows[method]
        print(f"{method:5s}: oracle score {r['oracle_score']:.2f} ± {r['oracle_score_std']:.2f}  success {r['success']:.0%}  "
              f"cube in zone {r['zone_fraction']:.1%} of steps  ({r['train_s']:.0f} s)", flush=True)
    figures = {"bench": "rapl-align", "steps": args.steps, "budget": args.budget, "seed": args.seed,
               "eval_episodes": args.eval_episodes, **{f"{m}_{k}": round(v, 4) for m, r in rows.items() for k, v in r.items()}}
    if "rapl" in rows and "rlhf" in rows:  # a difference within one standard error of the two means is a tie
        a, b = rows["rapl"], rows["rlhf"]
        stderr = (a["oracle_score_std"] ** 2 + b["oracle_score_std"] ** 2) ** 0.5 / max(1, args.eval_episodes) ** 0.5
        diff = a["oracle_score"] - b["oracle_score"]
        figures["winner"] = "tie" if abs(diff) <= stderr else ("rapl" if diff > 0 else "rlhf")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(figures, f, indent=1)
    return figures
