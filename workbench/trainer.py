"""The one training loop: collect -> rewards -> advantages -> epochs x minibatches -> log -> checkpoint.

It knows nothing about modalities: the env adapter fills a ``Batch``, the policy scores a
``Minibatch``, and registered functions (chosen in ``algo``) turn them into a loss.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

import workbench.schedules  # noqa: F401  (registers lr schedules)
from workbench import checkpoint
from workbench.advantages import compute_advantages, normalize_advantages
from workbench.batch import Batch, Minibatch
from workbench.config import RunConfig, to_yaml
from workbench.objectives import objective
from workbench.registry import ConfigError, ENVS, LR_SCHEDULES, POLICIES
from workbench.runlog import RunLogger, lock_run_dir, plot_learning_curve, release_run_dir
from workbench.stages.reward_shapers import shape_rewards


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss stayed non-finite); the last checkpoint is intact."""


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def minibatches(batch: Batch, unit: str, num_minibatches: int) -> Iterator[Minibatch]:
    """One epoch of shuffled minibatches: whole rows, or single (row, step) cells as [M, 1].

    Every sample (row, or valid cell of the loss mask) is used exactly once per epoch, in
    ``num_minibatches`` minibatches whose sizes differ by at most one (fewer if there are fewer
    samples); when the count divides evenly they are the contiguous slices of one permutation.
    """
    ids = batch.sample_ids(unit)
    order = ids[torch.randperm(ids.numel(), device=ids.device)]
    for idx in torch.tensor_split(order, min(num_minibatches, max(order.numel(), 1))):
        if idx.numel() == 0:
            return
        yield batch.select(idx, unit)


def check_master_weights(params: List[torch.Tensor], policy_name: str) -> None:
    """Trained parameters must be float32: Adam's small steps (lr 1e-6 on a weight of 0.02)
    are below bf16's rounding step (~1e-4) and would be lost. bf16 compute comes from
    ``precision=bf16`` (autocast around the forward passes), never from bf16 master weights."""
    low = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.dtype != torch.float32})
    if low:
        raise ConfigError(f"policy {policy_name}: trained parameters are {', '.join(low)}; the policy must keep them float32 "
                          "(use precision=bf16 for bf16 compute)")


class Trainer:
    def __init__(self, run: RunConfig, run_dir: Path) -> None:
        self.run, self.algo, self.run_dir = run, run.algo, Path(run_dir)
        torch.set_num_threads(run.threads)
        seed_everything(run.seed)
        self.device = select_device(run.device)
        self.bf16 = run.precision == "bf16" or (run.precision == "auto" and self.device.type == "cuda")
        self.env = ENVS.get(run.env.name)(run.env, seed=run.seed)
        self.policy = POLICIES.get(run.policy.name)(run.policy, self.env.spec()).to(self.device)
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(
            self.policy.param_groups(), lr=self.algo.lr, eps=self.algo.adam_eps, weight_decay=self.algo.weight_decay, fused=fused
        )
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        check_master_weights(self.params, run.policy.name)
        if run.init_from:
            self._init_policy_from(Path(run.init_from))
        self.num_iterations = math.ceil(run.total_steps / self.env.steps_per_collect)
        self.iteration, self.step = 0, 0
        self.sft_done = False
        self.nonfinite_updates = 0  # minibatches skipped for a non-finite loss (logged)
        self.nonfinite_streak = 0
        self.advantage_state: Dict = {}  # history of stateful estimators (per_prompt), checkpointed

    def _init_policy_from(self, source: Path) -> None:
        path = checkpoint.latest(source / "checkpoints") if source.is_dir() else source
        if path is None or not path.exists():
            raise ConfigError(f"init_from={source}: no checkpoint found")
        try:
            weights = checkpoint.load(path)["policy"]
        except checkpoint.CheckpointError as e:
            raise ConfigError(f"init_from={source}: {e}; give a run directory or a ckpt_*.safetensors it wrote") from None
        try:
            self.policy.load_state_dict(weights)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ConfigError(f"init_from={source}: its policy weights do not fit this policy ({str(e).splitlines()[0]}); "
                              f"start from a run with the same policy settings") from None
        self.policy.reset_reference()

    def warm_start(self, logger: RunLogger) -> None:
        """Supervised fine-tuning before RL (``sft.steps``), then a checkpoint so a resumed
        run never repeats it."""
        from workbench.sft import supervised_finetune

        def log(sft_step: int, metrics: Dict[str, float]) -> None:
            logger.log(0, {"sft/step": float(sft_step), **metrics})

        logger.message(f"supervised warm-start: {self.run.sft.steps} steps")
        supervised_finetune(self.policy, self.env, self.run.sft, self.device, log)
        self.policy.reset_reference()
        self.sft_done = True
        self.save_checkpoint()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "env": self.env.state_dict(),
            "rng": checkpoint.rng_state(),
            "advantage_state": self.advantage_state,
            "counters": {"iteration": self.iteration, "step": self.step, "sft_done": self.sft_done},
        }

    def load_state_dict(self, state: Dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.env.load_state_dict(state["env"])
        checkpoint.set_rng_state(state["rng"])
        self.advantage_state = dict(state.get("advantage_state") or {})
        self.iteration, self.step = int(state["counters"]["iteration"]), int(state["counters"]["step"])
        self.sft_done = bool(state["counters"].get("sft_done", False))

    def save_checkpoint(self) -> Path:
        path = checkpoint.checkpoint_path(self.run_dir / "checkpoints", self.iteration)
        intact = checkpoint.latest(self.run_dir / "checkpoints")
        try:
            checkpoint.save(path, self.state_dict())
        except OSError as e:  # a full disk, a quota: the earlier checkpoints survive (atomic writes)
            last = f"the last intact checkpoint is {intact}" if intact else "no checkpoint was written yet"
            raise TrainingError(f"cannot write checkpoint {path}: {e}; {last} "
                                f"(continue with resume={self.run_dir} once there is room)") from None
        checkpoint.prune(self.run_dir / "checkpoints", self.run.keep_checkpoints)
        return path

    # ------------------------------------------------------------------ update
    def update(self, batch: Batch) -> Dict[str, float]:
        algo = self.algo
        sums: Dict[str, torch.Tensor] = {}  # kept on the device: one sync per update, not per metric
        count = 0
        stop = False
        for _ in range(algo.update_epochs):
            for mb in minibatches(batch, self.policy.sample_unit, algo.num_minibatches):
                if algo.normalize_advantages == "minibatch":
                    mb.advantages = normalize_advantages(mb.advantages, mb.mask)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    out = self.policy.log_probs(mb.policy_inputs)
                loss, metrics = objective(out, mb, algo)
                if not torch.isfinite(loss):
                    self.nonfinite_updates += 1
                    self.nonfinite_streak += 1
                    if self.nonfinite_streak > 10:
                        raise TrainingError("loss was non-finite on 11 minibatches in a row; stopping (last checkpoint is intact)")
                    continue  # skip this minibatch rather than corrupt the weights
                self.nonfinite_streak = 0
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if algo.max_grad_norm:
                    metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, algo.max_grad_norm, foreach=True)
                self.optimizer.step()
                for k, v in metrics.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach().float()
                count += 1
                if algo.target_kl is not None and float(metrics["policy/approx_kl"]) > 1.5 * algo.target_kl:
                    stop = True
                    break
            if stop:
                break
        stats = {k: float(v) / max(count, 1) for k, v in sums.items()}
        stats["update/minibatches"] = float(count)
        stats["update/nonfinite_skipped"] = float(self.nonfinite_updates)
        if batch.returns is not None and batch.values is not None:
            m = batch.mask > 0
            y, v = batch.returns[m], batch.values[m]
            stats["loss/explained_variance"] = float(1 - torch.var(y - v) / torch.var(y)) if torch.var(y) > 0 else 0.0
        return stats

    # ------------------------------------------------------------------ loop
    def train(self, logger: Optional[RunLogger] = None, plot: bool = True) -> Dict[str, float]:
        run = self.run
        lock_run_dir(self.run_dir)  # one writer per run directory, for the run's life
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(run))
        self.env.attach(self.run_dir)
        logger = logger or RunLogger(self.run_dir, run.total_steps, self.step, progress=run.progress, display=self.env.display())
        schedule = LR_SCHEDULES.get(self.algo.lr_schedule)
        final: Dict[str, float] = {}
        try:
            if run.sft.steps > 0 and not self.sft_done:
                self.warm_start(logger)
            if run.eval_every and self.step == 0 and run.eval_episodes > 0:
                logger.log(0, self.env.evaluate(self.policy, run.eval_episodes))  # where RL starts from
            while self.step < run.total_steps:
                t0 = time.perf_counter()
                for group in self.optimizer.param_groups:
                    group["lr"] = self.algo.lr * schedule(self.iteration / self.num_iterations)
                self.policy.eval()
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    batch = self.env.collect(self.policy)  # the same numerics as the training forward: ratio 1 at first
                batch = self.env.assign_rewards(batch)
                batch, shaped = shape_rewards(batch, self.algo.stages.reward_shapers)  # e.g. DAPO overlong
                batch = compute_advantages(batch, self.algo, self.advantage_state)
                t_collect = time.perf_counter() - t0
                self.policy.train()
                stats = self.update(batch)
                self.iteration += 1
                self.step += self.env.steps_per_collect
                elapsed = time.perf_counter() - t0
                metrics = {
                    **self.env.pop_metrics(), **shaped, **stats,
                    "reward/mean": float((batch.rewards * batch.mask).sum() / batch.mask.sum()),  # per step
                    "reward/per_row": float((batch.rewards * batch.mask).sum(1).mean()),  # per trajectory
                    "perf/steps_per_s": self.env.steps_per_collect / elapsed,
                    "perf/collect_s": t_collect, "perf/update_s": elapsed - t_collect,
                    "lr": self.optimizer.param_groups[0]["lr"], "iteration": float(self.iteration),
                }
                if run.eval_every and self.step // run.eval_every > (self.step - self.env.steps_per_collect) // run.eval_every \
                        and self.step < run.total_steps:
                    metrics.update(self.env.evaluate(self.policy, run.eval_episodes))
                logger.log(self.step, metrics)
                if run.checkpoint_every and self.iteration % run.checkpoint_every == 0:
                    self.save_checkpoint()
            self.save_checkpoint()
            if run.eval_episodes > 0:
                video = str(self.run_dir / "rollout.mp4") if run.final_video and self.env.display().renders else None
                final = self.env.evaluate(self.policy, run.eval_episodes, video_path=video)
                logger.log(self.step, final)
        finally:
            logger.close()
            self.env.close()
            release_run_dir(self.run_dir)
        if plot:
            display = self.env.display()
            plot_learning_curve(self.run_dir, display, title=f"{run.name} ({display.name}, {self.algo.name})")
        return final

    def resume(self) -> None:
        """Load the newest intact checkpoint of ``run_dir`` and drop log lines written after it.

        An unreadable newest checkpoint (a truncated copy) is named in a warning and the one
        before it is used: that is what ``keep_checkpoints`` > 1 is for."""
        import sys

        lock_run_dir(self.run_dir)  # before anything in the directory is rewritten
        directory = self.run_dir / "checkpoints"
        found = checkpoint.list_checkpoints(directory)
        if not found:
            raise TrainingError(f"no checkpoint to resume from in {directory}")
        unreadable: List[str] = []
        for path in reversed(found):
            try:
                state = checkpoint.load(path)
                break
            except checkpoint.CheckpointError as e:
                unreadable.append(path.name)
                print(f"warning: checkpoint {path} is unreadable ({str(e).split(' (', 1)[-1].rstrip(')')}); "
                      f"trying the one before it", file=sys.stderr)
        else:
            raise TrainingError(f"no intact checkpoint to resume from in {directory} (unreadable: {', '.join(unreadable)})")
        if unreadable:
            print(f"warning: resuming from {path}, the newest intact checkpoint", file=sys.stderr)
        self.load_state_dict(state)
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            kept = [line for line in metrics.read_text().splitlines() if _logged_step(line) <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a blank or half-written line (a killed run) sorts last."""
    import json

    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
