"""``workbench bench ddpo``: the cost of one DDPO iteration against its ceiling.

The ceiling is the work no DDPO implementation can skip with the same model: sampling the
same images (no grad) plus one forward and backward of the UNet for every trained (image,
step) cell, in the same minibatches. Ours is a full iteration of the shared trainer (sample,
log-probs, reward, advantages, PPO update over the cells with one epoch, optimiser steps).
``overhead`` = ours / ceiling (lower is better; the issue's target is <= 1.3).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Dict, List

import torch

from workbench.registry import BENCHMARKS


def _overrides(args) -> List[str]:
    return [
        f"experiment={args.experiment}", "progress=false", "eval_every=0", "eval_episodes=0", "checkpoint_every=0",
        f"threads={args.threads}", f"env.prompts_per_iteration={args.prompts}", f"env.group_size={args.group_size}",
        f"policy.num_steps={args.num_steps}", "algo.update_epochs=1", f"algo.num_minibatches={args.minibatches}",
        f"total_steps={args.prompts * args.group_size * (args.iterations + 1)}", *args.set,
    ]


def ours_seconds(args) -> List[float]:
    from workbench.config import compose, validate
    from workbench.runlog import RunLogger
    from workbench.trainer import Trainer

    run = validate(compose(_overrides(args)))
    times: List[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(run, tmp)
        trainer.env.cfg.image_every = 0  # no PNG writing inside the timed loop
        logger = RunLogger(trainer.run_dir, run.total_steps, progress=False, tensorboard=False, display=trainer.env.display())
        last = [time.perf_counter()]

        def log(step, metrics):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        logger.log = log
        trainer.save_checkpoint = lambda: None
        last[0] = time.perf_counter()
        trainer.train(logger, plot=False)
    return times[1:]  # the first iteration warms up


def ceiling_seconds(args) -> List[float]:
    from workbench.config import compose, validate
    from workbench.registry import POLICIES

    from workbench.trainer import select_device

    run = validate(compose(_overrides(args)))
    torch.manual_seed(run.seed)
    device = select_device(run.device)
    bf16 = run.precision == "bf16" or (run.precision == "auto" and device.type == "cuda")  # as the trainer
    policy = POLICIES.get(run.policy.name)(run.policy).to(device)
    optimizer = torch.optim.Adam(policy.param_groups(), lr=1e-6, fused=True)  # as the trainer
    generator = torch.Generator().manual_seed(0)
    B = args.prompts * args.group_size
    cond = [run.env.prompts[i % args.prompts % len(run.env.prompts)] for i in range(B)]
    times: List[float] = []
    for _ in range(args.iterations + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # as the trainer's collect
            _, traj = policy.sample(cond, generator=generator)
        T = traj.step.shape[1]
        x_t, t = traj.x_t.flatten(0, 1), policy.schedule["timesteps"][traj.step.flatten()]
        c = {k: v.repeat_interleave(T, 0) for k, v in traj.cond.items()}
        for chunk in torch.randperm(x_t.shape[0]).chunk(args.minibatches):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                eps = policy.predict(x_t[chunk], t[chunk], {k: v[chunk] for k, v in c.items()})
            optimizer.zero_grad(set_to_none=True)
            eps.float().mean().backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


@BENCHMARKS.register("ddpo")
def bench_ddpo(argv: List[str]) -> Dict:
    parser = argparse.ArgumentParser(prog="workbench bench ddpo")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--minibatches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--experiment", default="ddpo_compressibility_demo",
                        help="e.g. sd15_ddpo_compressibility on a GPU (a real SD model); the default is the CPU demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ceiling = statistics.median(ceiling_seconds(args))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    ours = statistics.median(ours_seconds(args))
    peak_gb = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None
    figures = {
        "bench": "ddpo", "experiment": args.experiment, "images_per_iteration": args.prompts * args.group_size,
        "num_steps": args.num_steps, "minibatches": args.minibatches, "iterations": args.iterations, "threads": args.threads,
        "ours_s_per_iteration": round(ours, 4), "ceiling_s_per_iteration": round(ceiling, 4), "overhead": round(ours / ceiling, 3),
        "cuda_peak_gb": None if peak_gb is None else round(peak_gb, 2),
    }
    print(f"ddpo {figures['images_per_iteration']} images x {args.num_steps} steps: ours {ours:.3f} s/iteration, "
          f"ceiling (sample + one fwd/bwd per cell) {ceiling:.3f} s -> overhead {ours / ceiling:.2f}x", flush=True)
    return figures
