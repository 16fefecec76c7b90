"""What a token rollout backend returns, and the sampling options all backends share."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from workbench.fields import invalid_choice
from workbench.registry import ConfigError

# keys of SamplingConfig.temperature_schedule, with their defaults (None: required)
SCHEDULE_KINDS = ("ead", "linear")
_SCHEDULE_KEYS = {
    "ead": {"kind": "ead", "start": None, "end": None, "decay": None, "hold_tokens": 0, "hold_temperature": 1.0,
            "train_at_temperature_one": False},
    "linear": {"kind": "linear", "start": None, "end": None, "over_tokens": None, "hold_tokens": 0,
               "hold_temperature": 1.0, "train_at_temperature_one": False},
}


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    # Per-position sampling temperature T(t), t = 0-based token position in the completion;
    # None (default) = the constant ``temperature``. When set it replaces ``temperature``
    # (which is then ignored, also its "<= 0 means greedy"). Exploratory Annealed Decoding
    # (EAD; Yang et al. 2025, "Let it Calm: Exploratory Annealed Decoding for Verifiable
    # Reinforcement Learning", arXiv:2510.05251): explore at the start, exploit at the end.
    #   {kind: ead, start, end, decay}: T(t) = max(1 + start - exp(t / decay), end), the
    #       paper's schedule (start = tau_max, e.g. 1.2; end = tau_min, e.g. 0.1; decay = d,
    #       in tokens; T(0) = start).
    #   {kind: linear, start, end, over_tokens}: start -> end linearly over ``over_tokens``
    #       tokens, then ``end``.
    #   both: hold_tokens (default 0) first tokens sampled at hold_temperature (default 1.0),
    #       the paper's "c" for chat-template tokens.
    # ``kind`` defaults to ead. start == end gives plain sampling at that temperature. The
    # paper's step-dependent decay d_s = min(d_0 + 5 s, 40000) is not built in (set ``decay``).
    # Which policy is trained (``train_at_temperature_one``):
    #   false (default): the annealed distribution itself. Rollout and training log-probs both
    #       divide the logits of completion position t by T(t) (:func:`position_temperatures`),
    #       so training is on-policy: ratio 1 on the first epoch, no IS weight, no cap to tune.
    #   true: the paper's pairing. Tokens are sampled with the schedule (their annealed
    #       log-probs are kept as ``rollout_logp``, the behaviour policy), but the trained policy,
    #       ``logp_old`` and the reference are at T = 1 (:func:`training_logits`); the objective
    #       corrects with the truncated IS weight min(pi_1 / pi_EAD, algo.tis_cap), which
    #       must then be set. The T = 1 model is the one evaluated and deployed.
    temperature_schedule: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        if self.temperature_schedule is not None:
            self.temperature_schedule = normalize_schedule(self.temperature_schedule)

    @property
    def greedy(self) -> bool:
        """Argmax decoding: ``temperature <= 0`` and no schedule."""
        return self.temperature_schedule is None and self.temperature <= 0


def normalize_schedule(schedule: Dict[str, Any]) -> Dict[str, Any]:
    """A complete, validated copy of a ``temperature_schedule`` mapping (ConfigError if bad)."""
    if not isinstance(schedule, dict):
        try:
            schedule = dict(schedule)
        except (TypeError, ValueError):
            raise ConfigError(f"temperature_schedule must be a mapping, got {schedule!r}") from None
    kind = schedule.get("kind", "ead")
    if kind not in _SCHEDULE_KEYS:
        raise invalid_choice("temperature_schedule.kind", kind, SCHEDULE_KINDS)
    spec = _SCHEDULE_KEYS[kind]
    unknown = [k for k in schedule if k not in spec]
    if unknown:
        raise ConfigError(f"unknown temperature_schedule key(s) {unknown} for kind {kind}; valid keys: {', '.join(spec)}")
    out = {**spec, **schedule}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise ConfigError(f"temperature_schedule (kind {kind}) needs {', '.join(missing)}")
    if not isinstance(out["train_at_temperature_one"], bool):
        raise ConfigError(f"temperature_schedule.train_at_temperature_one must be true or false, "
                          f"got {out['train_at_temperature_one']!r}")
    for key in out:
        if key not in ("kind", "train_at_temperature_one"):
            try:
                out[key] = float(out[key]) if key not in ("hold_tokens",) else int(out[key])
            except (TypeError, ValueError):
                raise ConfigError(f"temperature_schedule.{key} must be a number, got {out[key]!r}") from None
    if not (0 < out["end"] <= out["start"] and math.isfinite(out["start"])):
        raise ConfigError(f"temperature_schedule needs 0 < end <= start, got start={out['start']} end={out['end']}")
    if out["hold_tokens"] < 0 or not out["hold_temperature"] > 0:
        raise ConfigError("temperature_schedule needs hold_tokens >= 0 and hold_temperature > 0")
    if kind == "ead" and not out["decay"] > 0:
        raise ConfigError(f"temperature_schedule.decay must be > 0, got {out['decay']}")
    if kind == "linear" and not out["over_tokens"] > 0:
        raise ConfigError(f"temperature_schedule.over_tokens must be > 0, got {out['over_tokens']}")
    return out


def scheduled_temperature(schedule: Dict[str, Any], t: int) -> float:
    """T(t) of a normalized schedule at completion position ``t`` (0-based), as a Python float."""
    if t < schedule["hold_tokens"]:
        return schedule["hold_temperature"]
    start, end = schedule["start"], schedule["end"]
    if schedule["kind"] == "ead":
        x = t / schedule["decay"]
        if x > 700.0:  # exp overflows; the max() below gives `end` anyway
            return end
        return max(1.0 + start - math.exp(x), end)
    return start + (end - start) * min(t / schedule["over_tokens"], 1.0)


def position_temperatures(sampling: SamplingConfig, length: int, device=None,
                          dtype: torch.dtype = torch.float32) -> Optional[torch.Tensor]:
    """[length] temperatures T(0..length-1) of ``sampling``'s schedule, or None without one.

    A log-prob consistent with the sampler divides the logits that predict completion token
    t by T(t): ``logits[:, t] / T(t)`` for logits [N, T, V] aligned with the completion.
    """
    if sampling.temperature_schedule is None:
        return None
    schedule = normalize_schedule(sampling.temperature_schedule)
    values = [scheduled_temperature(schedule, t) for t in range(length)]
    return torch.tensor(values, dtype=dtype, device=device)


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
    # per-row model inputs beside the tokens, each [N, ...] (a VLM's images as padded patch
    # tensors with their counts); they become the Batch's row_inputs
    row_inputs: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length:]

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: Sequence[int]) -> "TokenRollout":
        """The rollout restricted to ``rows`` (in that order); widths are unchanged."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.input_ids.device)
        pick = lambda t: None if t is None else t.index_select(0, idx)  # noqa: E731
        return TokenRollout(
            input_ids=pick(self.input_ids), attention_mask=pick(self.attention_mask), prompt_length=self.prompt_length,
            completion_mask=pick(self.completion_mask), rollout_logp=pick(self.rollout_logp),
            completions=[self.completions[i] for i in idx.tolist()], truncated=pick(self.truncated),
            logp=pick(self.logp), ref_logp=pick(self.ref_logp),
            row_inputs={k: v.index_select(0, idx.to(v.device)) for k, v in self.row_inputs.items()},
        )


def concat_rollouts(parts: Sequence[TokenRollout], pad_token_id: int) -> TokenRollout:
    """Stack rollouts whose prompt width P and completion width T may differ.

    Every row of the result has the same P (the largest): prompts are re-padded on the left,
    completions on the right, to the largest widths. Padding gets ``pad_token_id`` and
    attention 0, and 0 in the completion mask and the log-prob matrices, so position ids
    (cumsum of the attention mask) and every valid token's log-prob are unchanged.
    """
    if not parts:
        raise ValueError("concat_rollouts needs at least one rollout")
    if len(parts) == 1:
        return parts[0]
    for name in ("logp", "ref_logp"):
        if len({getattr(p, name) is None for p in parts}) > 1:
            raise ValueError(f"concat_rollouts: '{name}' is set on some rollouts and not on others")
    P = max(p.prompt_length for p in parts)
    T = max(p.completion_mask.shape[1] for p in parts)

    def tokens(p: TokenRollout, t: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((t.shape[0], P + T), fill, dtype=t.dtype, device=t.device)
        Tp = t.shape[1] - p.prompt_length
        out[:, P - p.prompt_length:P] = t[:, :p.prompt_length]
        out[:, P:P + Tp] = t[:, p.prompt_length:]
        return out

    def right(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=0)

    def cat(name: str) -> Optional[torch.Tensor]:
        if getattr(parts[0], name) is None:
            return None
        return torch.cat([right(getattr(p, name)) for p in parts])

    return TokenRollout(
        input_ids=torch.cat([tokens(p, p.input_ids, pad_token_id) for p in parts]),
        attention_mask=torch.cat([tokens(p, p.attention_mask, 0) for p in parts]),
        prompt_length=P,
        completion_mask=cat("completion_mask"),
        rollout_logp=cat("rollout_logp"),
        completions=[c for p in parts for c in p.completions],
        truncated=torch.cat([p.truncated for p in parts]),
        logp=cat("logp"),
        ref_logp=cat("ref_logp"),
        row_inputs=_cat_row_inputs(parts),
    )


def _cat_row_inputs(parts: Sequence[TokenRollout]) -> Dict[str, torch.Tensor]:
    """The parts' per-row inputs stacked along rows, every other dimension zero-padded to the
    largest (a VLM's padded patch tensors: their counts say what is real)."""
    keys = set(parts[0].row_inputs)
    if any(set(p.row_inputs) != keys for p in parts):
        raise ValueError("concat_rollouts: the rollouts carry different row_inputs")
    out = {}
    for k in sorted(keys):
        tensors = [p.row_inputs[k] for p in parts]
        shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
        padded = []
        for t in tensors:
            pad = [x for d in reversed(range(1, t.dim())) for x in (0, shape[d - 1] - t.shape[d])]
            padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
        out[k] = torch.cat(padded)
    return out


def scale_logits(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """[B, T, V] completion logits divided by the temperature each position was sampled at:
    the per-position schedule (EAD) if any, else the one temperature (greedy: unchanged).
    The sampler's log-probs and the trainer's recomputation both go through here, so they agree."""
    temps = position_temperatures(sampling, logits.shape[1], device=logits.device)
    if temps is not None:
        return logits.float() / temps.view(1, -1, 1)
    if sampling.temperature > 0:
        return logits / sampling.temperature
    return logits


def trains_at_temperature_one(sampling: SamplingConfig) -> bool:
    """True when ``sampling`` samples with a schedule but the trained policy is the T = 1 one
    (EAD pairing, ``temperature_schedule.train_at_temperature_one``)."""
    schedule = sampling.temperature_schedule
    return schedule is not None and bool(normalize_schedule(schedule)["train_at_temperature_one"])


def training_logits(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """[B, T, V] completion logits of the trained policy: those of the sampler
    (:func:`scale_logits`), except under EAD pairing, where the trained policy is at T = 1."""
    if trains_at_temperature_one(sampling):
        return logits
    return scale_logits(logits, sampling)


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_ids: List[int]) -> torch.Tensor:
    """[N, T] 1 up to and including the first EOS token of each row, 0 after it."""
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= completion_ids == eos
    # number of EOS tokens strictly before each position
    before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return (before == 0).float()
