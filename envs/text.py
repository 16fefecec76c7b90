"""Text reasoning with verifiable rewards: prompts from a task, completions from a token policy,
rewards from the shared reward library.

One iteration samples ``prompts_per_iteration`` items and ``group_size`` completions of each
(the group is what GRPO-style advantages compare within). The reward lands on the last valid
token of each completion.

DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale")
options: ``overlong_buffer`` adds the soft overlong punishment to the reward, and
``dynamic_sampling`` keeps only groups whose rewards differ, sampling more groups to fill the
batch. With dynamic sampling the rewards are computed in ``collect`` (the filter needs them)
and ``score`` hands them out; without it ``score`` computes them, as before.
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
from workbench.rollout.base import SamplingConfig, TokenRollout, concat_rollouts

# groups whose rewards span no more than this count as "all equal" for dynamic sampling
EQUAL_REWARDS_ATOL = 1e-6


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
        dynamic_sampling: bool = False
        max_sampling_rounds: int = 4

        def __post_init__(self) -> None:
            if self.prompts_per_iteration < 1 or self.group_size < 1:
                raise ConfigError("env.prompts_per_iteration and env.group_size must be >= 1")
            if self.overlong_buffer < 0 or not self.overlong_penalty >= 0:
                raise ConfigError("env.overlong_buffer and env.overlong_penalty must be >= 0")
            if self.max_sampling_rounds < 1:
                raise ConfigError("env.max_sampling_rounds must be >= 1")
            if self.dynamic_sampling and self.group_size < 2:
                raise ConfigError("env.dynamic_sampling needs env.group_size >= 2 (a group of one never varies)")

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
        self._max_new_tokens = 0  # L_max of the overlong punishment: the policy's, read in collect()

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
        if self.cfg.dynamic_sampling:
            return self._collect_dynamic(policy)
        items = [self._train_item() for _ in range(self.cfg.prompts_per_iteration)]
        G = self.cfg.group_size
        out = policy.rollout([self.prompt(x) for x in items], n=G)
        rows = [x for x in items for _ in range(G)]
        self._pending = {"completions": out.completions, "items": rows, "lengths": out.completion_mask.sum(1).long(),
                         "scores": None}
        self._metrics = {}
        return self._to_batch(out, len(items))

    def _collect_dynamic(self, policy) -> Batch:
        """DAPO dynamic sampling: rounds of rollouts, scored at once, zero-variance groups dropped."""
        K, G = self.cfg.prompts_per_iteration, self.cfg.group_size
        kept: List[TokenRollout] = []
        kept_scores: List[torch.Tensor] = []
        results, overlongs = [], []
        num_kept = num_dropped = rounds = 0
        last = None
        while num_kept < K and rounds < self.cfg.max_sampling_rounds:
            rounds += 1
            items = [self._train_item() for _ in range(K)]
            out = policy.rollout([self.prompt(x) for x in items], n=G)
            result = self._score(out.completions, [x for x in items for _ in range(G)])
            overlong = self._overlong(out.completion_mask.sum(1).long())
            scores = torch.tensor(result.scores, dtype=torch.float64) + torch.tensor(overlong, dtype=torch.float64)
            results.append(result)
            overlongs.extend(overlong)
            by_group = scores.view(K, G)
            varies = (by_group.max(1).values - by_group.min(1).values) > EQUAL_REWARDS_ATOL
            num_dropped += int((~varies).sum())
            take = varies.nonzero().flatten().tolist()[: K - num_kept]
            if take:
                rows = [g * G + j for g in take for j in range(G)]
                kept.append(out.select(rows))
                kept_scores.append(scores[rows])
                num_kept += len(take)
            last = (out, scores)
        if not kept:  # nothing varied: train on the last round (zero group advantages)
            kept, kept_scores = [last[0]], [last[1]]
        pad_id = getattr(getattr(policy, "tokenizer", None), "pad_token_id", None)
        out = concat_rollouts(kept, 0 if pad_id is None else int(pad_id))
        self._pending = {"scores": torch.cat(kept_scores)}
        self._metrics = self._reward_metrics(_concat_results(results), overlongs)
        self._metrics.update({"sampling/rounds": float(rounds), "sampling/kept_groups": float(num_kept),
                              "sampling/dropped_groups": float(num_dropped)})
        return self._to_batch(out, out.num_rows // G)

    def _to_batch(self, out: TokenRollout, num_groups: int) -> Batch:
        """The Batch of ``num_groups`` consecutive groups of ``group_size`` rows."""
        mask = out.completion_mask
        loss_mask = None
        if self.cfg.mask_truncated_completions:
            loss_mask = (~out.truncated).float().unsqueeze(1).expand_as(mask).contiguous()
        N = mask.shape[0]
        lengths = out.completion_mask.sum(1).long()
        dones = torch.zeros_like(mask)
        dones[torch.arange(N), (lengths - 1).clamp(min=0)] = 1.0
        mismatch = ((out.logp - out.rollout_logp).abs() * out.completion_mask).sum() / out.completion_mask.sum().clamp(min=1)
        self._metrics.update({
            "response/length_mean": float(lengths.float().mean()),
            "response/truncated_frac": float(out.truncated.float().mean()),
            "rollout/logp_mismatch": float(mismatch),
        })
        return Batch(
            logp_old=out.logp,
            mask=mask,
            rewards=torch.zeros_like(mask),
            dones=dones,
            group=torch.arange(num_groups, device=mask.device).repeat_interleave(self.cfg.group_size),
            ref_logp=out.ref_logp,
            rollout_logp=out.rollout_logp,  # for algo.tis_cap when the sampler is not the trained model
            loss_mask=loss_mask,
            max_steps=self._max_new_tokens,  # the generation limit: Dr.GRPO's constant normaliser
            policy_inputs={
                "input_ids": out.input_ids,
                "attention_mask": out.attention_mask,
                "prompt_length": torch.full((N,), out.prompt_length, device=mask.device),
            },
        )

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

    def score(self, batch: Batch) -> Batch:
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


def soft_overlong_punishment(lengths: List[int], max_length: int, buffer: int, penalty: float = 1.0) -> List[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025, sec. 3.4) of completion lengths |y|:
    0 for |y| <= L_max - L_cache, ((L_max - L_cache) - |y|) / L_cache * penalty up to L_max,
    -penalty beyond. ``max_length`` = L_max, ``buffer`` = L_cache (0: all zeros)."""
    if buffer <= 0:
        return [0.0] * len(lengths)
    start = max_length - buffer
    out = []
    for n in lengths:
        if n <= start:
            out.append(0.0)
        elif n <= max_length:
            out.append((start - n) / buffer * penalty)
        else:
            out.append(-float(penalty))
    return out


def _concat_results(results):
    """One RewardResult of several batches scored by the same pipeline."""
    from workbench.rewards.base import RewardResult

    if len(results) == 1:
        return results[0]
    scores = [s for r in results for s in r.scores]
    components = {k: [v for r in results for v in r.components[k]] for k in results[0].components}
    failures = {k: sum(r.failures.get(k, 0) for r in results) for k in results[0].failures}
    return RewardResult(scores, components, failures, dict(results[0].weights))
