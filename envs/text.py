"""Text reasoning with verifiable rewards: prompts from a task, completions from a token policy,
rewards from the shared reward library.

One iteration samples ``prompts_per_iteration`` items and ``group_size`` completions of each
(the group is what GRPO-style advantages compare within). The reward lands on the last valid
token of each completion.

DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale")
options: ``overlong_buffer`` adds the soft overlong punishment to the reward, and
``dynamic_sampling`` keeps only groups whose rewards differ, sampling more groups to fill the
batch. With dynamic sampling the rewards are computed in ``collect`` (the filter needs them)
and ``assign_rewards`` hands them out; without it ``assign_rewards`` computes them.
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
from workbench.environment import EnvDisplay, Environment, Headline
from workbench.fields import reward_specs
from workbench.policies.base import TokenGenerator
from workbench.registry import ConfigError, ENVS
from workbench.rollout.base import SamplingConfig, TokenRollout
from workbench.rollout.tokens import collect_filtered_groups, collect_groups, rollout_metrics, token_batch
from workbench.stages.reward_shapers import soft_overlong_punishment


@ENVS.register("text")
class TextEnv(Environment):
    policy_contract = TokenGenerator
    has_demonstrations = True
    has_step_limit = True
    @dataclass
    class Config:
        name: str = "text"
        task: str = "arithmetic"  # arithmetic | countdown | dataset
        task_kwargs: Dict[str, Any] = field(default_factory=dict)
        prompt_template: str = "{question}"
        prompts_per_iteration: int = 16
        group_size: int = 8
        rewards: List[Dict[str, Any]] = reward_specs({"name": "math_accuracy", "weight": 1.0})
        accuracy_reward: str = "math_accuracy"  # the reward component reported as accuracy
        demonstration_template: str = "{answer}"  # the target text of an SFT demonstration
        # share of SFT demonstrations written by the task's flawed teacher (arithmetic: one who
        # forgets to carry), to study RL repairing imperfect SFT data; 0 = all demonstrations correct
        demonstration_flaw_rate: float = 0.0
        failure_score: float = 0.0  # reward of a sample whose reward function raised
        # TRL: no gradient from completions cut by max_new_tokens (Batch.loss_mask); their true
        # reward still counts in the group baselines and the reward metrics
        mask_truncated_completions: bool = False
        eval_size: int = 200
        # DAPO soft overlong punishment (Yu et al. 2025, "DAPO", sec. 3.4). overlong_buffer =
        # L_cache in tokens, 0 (default) = off; L_max = the policy's max_new_tokens, read at
        # collect time (overlong_buffer must not exceed it). For a completion of |y| tokens
        # (its EOS included) the reward gets 0 if |y| <= L_max - L_cache,
        # ((L_max - L_cache) - |y|) / L_cache * overlong_penalty up to L_max, and
        # -overlong_penalty beyond; logged as reward/overlong. DAPO: L_cache = 4096 of 20480.
        overlong_buffer: int = 0
        overlong_penalty: float = 1.0  # the punishment at L_max (default 1.0, as in DAPO)
        # DAPO dynamic sampling (Yu et al. 2025, "DAPO", sec. 3.2; verl filter_groups): keep
        # only groups whose rewards (the total, overlong included) are not all equal (spread
        # > 1e-6), sampling rounds of prompts_per_iteration new groups until that many are kept
        # or max_sampling_rounds rounds were sampled (default off, 4 rounds). Kept groups
        # beyond prompts_per_iteration are discarded. If fewer survive, the batch holds just
        # those (fewer rows); if none survive, it holds the last round's groups (all with
        # zero group advantage). Reward metrics and accuracy cover every sampled completion;
        # sampling/rounds, sampling/kept_groups and sampling/dropped_groups describe the filter.
        dynamic_sampling: bool = False  # alias of batch_filter={name: dynamic_sampling, max_rounds: max_sampling_rounds}
        max_sampling_rounds: int = 4
        # a registered batch filter (workbench/stages/batch_filters.py) run over sampling rounds
        # by the token collector, e.g. {name: dynamic_sampling, max_rounds: 4}; null: none
        batch_filter: Optional[Dict[str, Any]] = None

        def __post_init__(self) -> None:
            if self.prompts_per_iteration < 1 or self.group_size < 1:
                raise ConfigError("env.prompts_per_iteration and env.group_size must be >= 1")
            if self.overlong_buffer < 0 or not self.overlong_penalty >= 0:
                raise ConfigError("env.overlong_buffer and env.overlong_penalty must be >= 0")
            if self.max_sampling_rounds < 1:
                raise ConfigError("env.max_sampling_rounds must be >= 1")
            if self.dynamic_sampling and self.group_size < 2:
                raise ConfigError("env.dynamic_sampling needs env.group_size >= 2 (a group of one never varies)")
            self.filter_stage()  # a bad filter name or option fails at start-up

        def filter_stage(self):
            """The configured batch filter as a callable stage, or None."""
            from workbench.stages.base import BATCH_FILTERS

            if self.dynamic_sampling:
                if self.batch_filter is not None:
                    raise ConfigError("env.dynamic_sampling is the batch filter dynamic_sampling; drop it or env.batch_filter")
                return BATCH_FILTERS.build({"name": "dynamic_sampling", "max_rounds": self.max_sampling_rounds},
                                           "env.dynamic_sampling")
            return None if self.batch_filter is None else BATCH_FILTERS.build(dict(self.batch_filter), "env.batch_filter")

    def __init__(self, cfg: "TextEnv.Config", seed: int) -> None:
        from workbench.rewards.base import RewardPipeline

        self.cfg, self.seed = cfg, seed
        self.task = build_task(cfg.task, dict(cfg.task_kwargs))
        self.rewards = RewardPipeline(list(cfg.rewards), failure_score=cfg.failure_score)
        self.held_out = eval_items(self.task, cfg.eval_size, seed)
        self._held_out_questions = {x["question"] for x in self.held_out}
        self.rng = random.Random(seed)
        self.steps_per_collect = cfg.prompts_per_iteration * cfg.group_size
        self.batch_filter = cfg.filter_stage()
        self._pending: Optional[Dict[str, Any]] = None
        self._metrics: Dict[str, float] = {}
        self._max_new_tokens = 0  # L_max of the overlong punishment: the policy's, read in collect()

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
        if self.cfg.demonstration_flaw_rate > 0:
            if not hasattr(self.task, "flawed_answer"):
                raise ConfigError(f"env.demonstration_flaw_rate needs a task with a flawed teacher; '{self.cfg.task}' has none")
            items = [dict(x, answer=self.task.flawed_answer(x)) if self.rng.random() < self.cfg.demonstration_flaw_rate else x
                     for x in items]
        try:
            return [self.prompt(x) for x in items], [self.cfg.demonstration_template.format(**x) for x in items]
        except KeyError as e:
            raise ConfigError(f"env.demonstration_template names {e}, which this task's items do not have") from None

    def collect(self, policy) -> Batch:
        self._max_new_tokens = int(policy.sampling.max_new_tokens)
        if self.cfg.overlong_buffer > self._max_new_tokens:
            raise ConfigError(f"env.overlong_buffer={self.cfg.overlong_buffer} exceeds policy.max_new_tokens="
                              f"{self._max_new_tokens}")
        if self.batch_filter is not None:
            return self._collect_filtered(policy)
        items = [self._train_item() for _ in range(self.cfg.prompts_per_iteration)]
        G = self.cfg.group_size
        out = collect_groups(policy, [self.prompt(x) for x in items], G)
        rows = [x for x in items for _ in range(G)]
        self._pending = {"completions": out.completions, "items": rows, "lengths": out.completion_mask.sum(1).long(),
                         "scores": None}
        self._metrics = rollout_metrics(out)
        return token_batch(out, G, self._max_new_tokens, self.cfg.mask_truncated_completions)

    def _collect_filtered(self, policy) -> Batch:
        """Rounds of rollouts, scored at once, under the batch filter (DAPO: zero-variance groups dropped)."""
        K, G = self.cfg.prompts_per_iteration, self.cfg.group_size
        drawn: List[List[Dict[str, Any]]] = []

        def draw() -> List[str]:
            drawn.append([self._train_item() for _ in range(K)])
            return [self.prompt(x) for x in drawn[-1]]

        def score(out: TokenRollout):
            result = self._score(out.completions, [x for x in drawn[-1] for _ in range(G)])
            overlong = self._overlong(out.completion_mask.sum(1).long())
            return torch.tensor(result.scores, dtype=torch.float64) + torch.tensor(overlong, dtype=torch.float64), (result, overlong)

        got = collect_filtered_groups(policy, draw, G, K, self.batch_filter, score)
        self._pending = {"scores": got.scores}
        results = [r for r, _ in got.every_round]
        self._metrics = self._reward_metrics(_concat_results(results), [v for _, o in got.every_round for v in o])
        self._metrics.update({"sampling/rounds": float(got.rounds), "sampling/kept_groups": float(got.kept_groups),
                              "sampling/dropped_groups": float(got.dropped_groups)})
        self._metrics.update(rollout_metrics(got.rollout))
        return token_batch(got.rollout, G, self._max_new_tokens, self.cfg.mask_truncated_completions)

    def _score(self, completions: List[str], items: List[Dict[str, Any]]):
        columns = {k: [x.get(k) for x in items] for k in items[0]}
        return self.rewards(completions, **columns)

    def _overlong(self, lengths: torch.Tensor) -> List[float]:
        """DAPO soft overlong punishment of each completion length (zeros when off)."""
        return soft_overlong_punishment(lengths.tolist(), self._max_new_tokens,
                                        self.cfg.overlong_buffer, self.cfg.overlong_penalty)

    def _reward_metrics(self, result, overlong: List[float]) -> Dict[str, float]:
        metrics = result.metrics()
        if self.cfg.overlong_buffer > 0 and len(result):
            metrics["reward/overlong"] = float(np.mean(overlong))
            metrics["reward/total"] = float(np.mean(np.asarray(result.scores) + np.asarray(overlong)))
        if self.cfg.accuracy_reward in result.components:
            metrics["accuracy"] = float(np.mean(result.components[self.cfg.accuracy_reward]))
        return metrics

    def assign_rewards(self, batch: Batch) -> Batch:
        if self._pending is None:
            raise RuntimeError("score() called before collect()")
        scores = self._pending["scores"]
        if scores is None:  # not scored in collect: score now
            result = self._score(self._pending["completions"], self._pending["items"])
            overlong = self._overlong(self._pending["lengths"])
            scores = torch.tensor(result.scores, dtype=torch.float64) + torch.tensor(overlong, dtype=torch.float64)
            self._metrics.update(self._reward_metrics(result, overlong))
        scores = scores.to(dtype=batch.rewards.dtype, device=batch.rewards.device)
        rewards = batch.dones * scores.unsqueeze(1)
        self._pending = None
        return batch.with_(rewards=rewards)

    def pop_metrics(self) -> Dict[str, float]:
        metrics, self._metrics = self._metrics, {}
        return metrics

    def display(self) -> EnvDisplay:
        """Held-out greedy accuracy (train: the sampled completions' accuracy); evaluate takes ``k``."""
        accuracy = Headline("accuracy", "eval/accuracy", "accuracy", fmt=".3f")
        return EnvDisplay(name=self.cfg.task, headline=(accuracy,), evaluation="greedy", eval_unit="held-out items",
                          step_unit="samples", pass_at_k=True)

    @torch.no_grad()
    def evaluate(self, policy, episodes: int, video_path: Optional[str] = None, seed: Optional[int] = None,
                 *, k: int = 1, temperature: Optional[float] = None) -> Dict[str, float]:
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
        from workbench.checkpoint import python_rng_to_plain

        return {"rng": python_rng_to_plain(self.rng.getstate())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        from workbench.checkpoint import python_rng_from_plain

        self.rng.setstate(python_rng_from_plain(state["rng"]))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k), from n samples with c correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _concat_results(results):
    """One RewardResult of several batches scored by the same pipeline."""
    from workbench.rewards.base import RewardResult

    if len(results) == 1:
        return results[0]
    scores = [s for r in results for s in r.scores]
    components = {k: [v for r in results for v in r.components[k]] for k in results[0].components}
    failures = {k: sum(r.failures.get(k, 0) for r in results) for k in results[0].failures}
    return RewardResult(scores, components, failures, dict(results[0].weights))
