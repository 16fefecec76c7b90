"""Text reasoning with verifiable rewards: prompts from a task, completions from a token policy,
rewards from the shared reward library.

One iteration samples ``prompts_per_iteration`` items and ``group_size`` completions of each
(the group is what GRPO-style advantages compare within). The reward lands on the last valid
token of each completion.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from envs.text_tasks import build_task, eval_items
from workbench.batch import Batch
from workbench.environment import Environment, EnvSpec
from workbench.registry import ConfigError, ENVS
from workbench.rollout.base import SamplingConfig


@ENVS.register("text")
class TextEnv(Environment):
    @dataclass
    class Config:
        name: str = "text"
        task: str = "arithmetic"  # arithmetic | countdown | dataset
        task_kwargs: Dict[str, Any] = field(default_factory=dict)
        prompt_template: str = "{question}"
        prompts_per_iteration: int = 16
        group_size: int = 8
        rewards: List[Dict[str, Any]] = field(default_factory=lambda: [{"name": "math_accuracy", "weight": 1.0}])
        accuracy_reward: str = "math_accuracy"  # the reward component reported as accuracy
        demonstration_template: str = "{answer}"  # the target text of an SFT demonstration
        failure_score: float = 0.0  # reward of a sample whose reward function raised
        mask_truncated_completions: bool = False  # TRL: no gradient from completions cut by max_new_tokens
        eval_size: int = 200

        def __post_init__(self) -> None:
            if self.prompts_per_iteration < 1 or self.group_size < 1:
                raise ConfigError("env.prompts_per_iteration and env.group_size must be >= 1")

    def __init__(self, cfg: "TextEnv.Config", seed: int) -> None:
        from workbench.rewards.base import RewardPipeline

        self.cfg, self.seed = cfg, seed
        self.task = build_task(cfg.task, dict(cfg.task_kwargs))
        self.rewards = RewardPipeline(list(cfg.rewards), failure_score=cfg.failure_score)
        self.held_out = eval_items(self.task, cfg.eval_size, seed)
        self._held_out_questions = {x["question"] for x in self.held_out}
        self.rng = random.Random(seed)
        self.steps_per_collect = cfg.prompts_per_iteration * cfg.group_size
        self._pending: Optional[Dict[str, Any]] = None
        self._metrics: Dict[str, float] = {}

    def spec(self) -> EnvSpec:
        return EnvSpec(observation_shape=(), action_dim=0)

    def _train_item(self) -> Dict[str, Any]:
        for _ in range(1000):
            item = self.task.make(self.rng)
            if item["question"] not in self._held_out_questions:
                return item
        raise ConfigError("the task cannot produce training items outside the held-out set; raise its difficulty")

    def prompt(self, item: Dict[str, Any]) -> str:
        return self.cfg.prompt_template.format(**item)

    def demonstrations(self, n: int):
        """(prompts, target completions) of ``n`` training items, for supervised warm-start."""
        items = [self._train_item() for _ in range(n)]
        try:
            return [self.prompt(x) for x in items], [self.cfg.demonstration_template.format(**x) for x in items]
        except KeyError as e:
            raise ConfigError(f"env.demonstration_template names {e}, which this task's items do not have") from None

    def collect(self, policy) -> Batch:
        items = [self._train_item() for _ in range(self.cfg.prompts_per_iteration)]
        G = self.cfg.group_size
        out = policy.rollout([self.prompt(x) for x in items], n=G)
        mask = out.completion_mask
        if self.cfg.mask_truncated_completions:
            mask = mask * (~out.truncated).float().unsqueeze(1)
        N = mask.shape[0]
        lengths = out.completion_mask.sum(1).long()
        dones = torch.zeros_like(mask)
        dones[torch.arange(N), (lengths - 1).clamp(min=0)] = 1.0
        self._pending = {"completions": out.completions, "items": [x for x in items for _ in range(G)], "lengths": lengths}
        mismatch = ((out.logp - out.rollout_logp).abs() * out.completion_mask).sum() / out.completion_mask.sum().clamp(min=1)
        self._metrics = {
            "response/length_mean": float(lengths.float().mean()),
            "response/truncated_frac": float(out.truncated.float().mean()),
            "rollout/logp_mismatch": float(mismatch),
        }
        return Batch(
            logp_old=out.logp,
            mask=mask,
            rewards=torch.zeros_like(mask),
            dones=dones,
            group=torch.arange(len(items), device=mask.device).repeat_interleave(G),
            ref_logp=out.ref_logp,
            policy_inputs={
                "input_ids": out.input_ids,
                "attention_mask": out.attention_mask,
                "prompt_length": torch.full((N,), out.prompt_length, device=mask.device),
            },
        )

    def _score(self, completions: List[str], items: List[Dict[str, Any]]):
        columns = {k: [x.get(k) for x in items] for k in items[0]}
        return self.rewards(completions, **columns)

    def score(self, batch: Batch) -> Batch:
        if self._pending is None:
            raise RuntimeError("score() called before collect()")
        result = self._score(self._pending["completions"], self._pending["items"])
        scores = torch.tensor(result.scores, dtype=batch.rewards.dtype, device=batch.rewards.device)
        rewards = batch.dones * scores.unsqueeze(1)
        self._metrics.update(result.metrics())
        if self.cfg.accuracy_reward in result.components:
            self._metrics["accuracy"] = float(np.mean(result.components[self.cfg.accuracy_reward]))
        self._pending = None
        return batch.with_(rewards=rewards)

    def pop_metrics(self) -> Dict[str, float]:
        metrics, self._metrics = self._metrics, {}
        return metrics

    @torch.no_grad()
    def evaluate(self, policy, episodes: int, video_path: Optional[str] = None, seed: Optional[int] = None,
                 k: int = 1, temperature: Optional[float] = None) -> Dict[str, float]:
        """Greedy accuracy on the held-out set; with ``k > 1``, mean@k and unbiased pass@k of sampled answers."""
        items = self.held_out[: min(episodes, len(self.held_out))] if episodes else self.held_out
        sampling = SamplingConfig(policy.sampling.max_new_tokens, 0.0)
        out = policy.rollout([self.prompt(x) for x in items], n=1, sampling=sampling)
        acc = self._accuracy(out.completions, items)
        metrics = {"eval/accuracy": float(np.mean(acc)), "eval/episodes": float(len(items)),
                   "eval/return_mean": float(np.mean(acc)), "eval/return_std": float(np.std(acc))}
        if k > 1:
            t = temperature if temperature is not None else (policy.sampling.temperature or 1.0)
            sampled = policy.rollout([self.prompt(x) for x in items], n=k, sampling=SamplingConfig(policy.sampling.max_new_tokens, t, policy.sampling.top_p))
            correct = np.array(self._accuracy(sampled.completions, [x for x in items for _ in range(k)])).reshape(len(items), k)
            metrics[f"eval/mean@{k}"] = float(correct.mean())
            for j in sorted({1, *[2**i for i in range(1, 7) if 2**i <= k], k}):
                metrics[f"eval/pass@{j}"] = float(np.mean([pass_at_k(k, int(c), j) for c in correct.sum(1)]))
        return metrics

    def _accuracy(self, completions: List[str], items: List[Dict[str, Any]]) -> List[float]:
        result = self._score(completions, items)
        if self.cfg.accuracy_reward not in result.components:
            raise ConfigError(f"env.accuracy_reward '{self.cfg.accuracy_reward}' is not among the rewards {sorted(result.components)}")
        return [float(v) > 0.5 for v in result.components[self.cfg.accuracy_reward]]

    def state_dict(self) -> Dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k), from n samples with c correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
