"""Supervised fine-tuning on an env's demonstrations, with the same policy and optimiser
plumbing as RL (so LoRA, dtype and checkpoints behave the same).

Policy-agnostic: the env supplies ``demonstrations(n) -> (prompts, targets)``, the policy
turns them into ``policy_inputs`` and a mask with ``encode_demonstrations``, and the loss is
the negative mean log-prob of the demonstrated actions from the policy's own ``log_probs``.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

from workbench.policies.base import TokenGenerator
from workbench.registry import ConfigError, LR_SCHEDULES

SFT_NEEDS = "sft.steps > 0 needs an env with demonstrations and a token policy that encodes them (e.g. text + causal_lm)"


def supervised_finetune(policy, env, cfg, device: torch.device, log: Callable[[int, Dict[str, float]], None]) -> None:
    if not type(env).has_demonstrations or not isinstance(policy, TokenGenerator):
        raise ConfigError(SFT_NEEDS)
    optimizer = torch.optim.AdamW(policy.param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    schedule = LR_SCHEDULES.get(cfg.lr_schedule)
    policy.train()
    running = 0.0
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * schedule(step / cfg.steps)
        prompts, targets = env.demonstrations(cfg.batch_size)
        inputs, mask = policy.encode_demonstrations(prompts, targets)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        mask = mask.to(device)
        logp = policy.log_probs(inputs).logp
        loss = -(logp * mask).sum() / mask.sum().clamp(min=1)
        if not torch.isfinite(loss):
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        running += float(loss.detach())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = (step % cfg.log_every) + 1
            log(step + 1, {"sft/loss": running / n, "sft/lr": optimizer.param_groups[0]["lr"]})
            running = 0.0
    policy.eval()
