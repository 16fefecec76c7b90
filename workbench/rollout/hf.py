"""The ``hf`` rollout backend: batched sampling with transformers ``generate``.

Log-probs come from the raw logits (``output_logits=True``) divided by the temperature, not
from ``scores``, which are post-processed and differ from a recomputation. With a
``temperature_schedule`` (Exploratory Annealed Decoding, see :class:`SamplingConfig`) a
:class:`PositionTemperature` logits processor divides the logits of completion position t by
T(t) before top-k/top-p, and the log-probs divide the raw logits by the same T(t).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from workbench.rollout.base import (
    SamplingConfig,
    TokenRollout,
    completion_mask_from_eos,
    normalize_schedule,
    scale_logits,
    scheduled_temperature,
)


class PositionTemperature(LogitsProcessor):
    """transformers ``LogitsProcessor``: ``scores / T(t)`` with t = the 0-based position of the
    token being sampled within the completion (``input_ids.shape[1] - prompt_length``; prompts
    are left-padded to one width, so t is the same for every row).

    Exploratory Annealed Decoding (Yang et al. 2025, "Let it Calm: Exploratory Annealed
    Decoding for Verifiable Reinforcement Learning"): high temperature on the first tokens,
    low at the end. ``generate`` runs custom processors before its own temperature/top-k/top-p
    warpers, so pass ``temperature=1.0`` with it.
    """

    def __init__(self, schedule: Dict[str, Any], prompt_length: int) -> None:
        self.schedule = normalize_schedule(schedule)
        self.prompt_length = prompt_length

    def temperature(self, t: int) -> float:
        return scheduled_temperature(self.schedule, t)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature(input_ids.shape[1] - self.prompt_length)


@torch.no_grad()
def generate(model, tokenizer, prompts: List[str], n: int, sampling: SamplingConfig, eos_ids: List[int]) -> TokenRollout:
    """``n`` sampled completions of each text prompt (rows grouped by prompt)."""
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_ids = enc["input_ids"].to(device).repeat_interleave(n, dim=0)
    prompt_mask = enc["attention_mask"].to(device).repeat_interleave(n, dim=0)
    return generate_encoded(model, tokenizer, prompt_ids, prompt_mask, sampling, eos_ids)


def generate_encoded(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingConfig,
                     eos_ids: List[int], model_inputs: Optional[Dict[str, torch.Tensor]] = None,
                     suppress_tokens: Optional[List[int]] = None,
                     mask_logits: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> TokenRollout:
    """Sample completions of left-padded prompt rows and return them with their log-probs.

    ``model_inputs``: what ``generate`` takes instead of the bare tokens (a VLM's pixels and
    modality ids beside ``input_ids`` / ``attention_mask``); ``suppress_tokens``: ids never
    sampled; ``mask_logits``: the same restriction applied to the raw logits before the
    log-probs, so that they are those of the distribution actually sampled from."""
    P = prompt_ids.shape[1]
    schedule = sampling.temperature_schedule
    greedy = sampling.greedy
    extra: Dict[str, Any] = {}
    if schedule is not None:
        extra["logits_processor"] = LogitsProcessorList([PositionTemperature(schedule, P)])
        temperature = 1.0  # the processor does the scaling
    else:
        temperature = None if greedy else sampling.temperature
    if suppress_tokens:
        extra["suppress_tokens"] = list(suppress_tokens)
    out = model.generate(
        **(model_inputs if model_inputs is not None else {"input_ids": prompt_ids, "attention_mask": prompt_mask}),
        do_sample=not greedy,
        temperature=temperature,
        top_p=None if greedy else sampling.top_p,
        top_k=None if greedy else sampling.top_k,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
        **extra,
    )
    completion_ids = out.sequences[:, P:]
    mask = completion_mask_from_eos(completion_ids, eos_ids)
    logits = torch.stack(out.logits, dim=1).float()  # [N, T, V]
    if mask_logits is not None:
        logits = mask_logits(logits)
    logits = scale_logits(logits, sampling)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) * mask
    completion_ids = torch.where(mask > 0, completion_ids, torch.full_like(completion_ids, tokenizer.pad_token_id))
    ended = (mask.sum(1) < mask.shape[1]) | _ends_with_eos(completion_ids, mask, eos_ids)
    return TokenRollout(
        input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, mask.long()], dim=1),
        prompt_length=P,
        completion_mask=mask,
        rollout_logp=logp,
        completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        truncated=~ended,
    )


def _ends_with_eos(ids: torch.Tensor, mask: torch.Tensor, eos_ids: List[int]) -> torch.Tensor:
    last = ids.gather(1, (mask.sum(1).long() - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.isin(last, torch.tensor(eos_ids, device=ids.device))
