"""What a token rollout backend returns, and the sampling options all backends share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off


@dataclass
class TokenRollout:
    """N sampled completions of left-padded prompts, as one [N, P + T] token matrix.

    The prompt occupies columns [0, P) (left-padded), completions [P, P + T) (right-padded after
    the first EOS, which is kept and counted as a valid action).
    """

    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    prompt_length: int  # P
    completion_mask: torch.Tensor  # [N, T] float, 1 up to and including EOS
    rollout_logp: torch.Tensor  # [N, T] log-probs under the sampler (0 on padding)
    completions: List[str]  # decoded completions (EOS and padding stripped)
    truncated: torch.Tensor  # [N] bool, stopped by max_new_tokens without EOS
    logp: Optional[torch.Tensor] = None  # [N, T] recomputed by the trainer's model (logp_old)
    ref_logp: Optional[torch.Tensor] = None  # [N, T] under the reference model, if any

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length:]


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_ids: List[int]) -> torch.Tensor:
    """[N, T] 1 up to and including the first EOS token of each row, 0 after it."""
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= completion_ids == eos
    # number of EOS tokens strictly before each position
    before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return (before == 0).float()
