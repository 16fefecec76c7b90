"""Format rewards: the ``<think>...</think><answer>...</answer>`` structure and regex matches."""
from __future__ import annotations

import re
from typing import Any, List, Sequence, Union

from workbench.registry import REWARDS
from workbench.rewards.base import completion_text

__all__ = ["think_answer_format", "regex_match", "think_answer_score"]

TAG_CREDIT = 0.2  # partial credit per tag that appears exactly once


def think_answer_score(text: str, think_tag: str = "think", answer_tag: str = "answer",
                       partial: bool = False, require_content: bool = False) -> float:
    """Score of one completion; see :func:`think_answer_format`."""
    tags = [f"<{think_tag}>", f"</{think_tag}>", f"<{answer_tag}>", f"</{answer_tag}>"]
    once = [text.count(t) == 1 for t in tags]
    if all(once):
        t, a = (re.escape(x) for x in (think_tag, answer_tag))
        m = re.fullmatch(rf"\s*<{t}>(.*)</{t}>\s*<{a}>(.*)</{a}>\s*", text, re.DOTALL)
        if m and (not require_content or (m.group(1).strip() and m.group(2).strip())):
            return 1.0
    return TAG_CREDIT * sum(once) if partial else 0.0


@REWARDS.register("think_answer_format")
def think_answer_format(partial: bool = False, require_content: bool = False,
                        think_tag: str = "think", answer_tag: str = "answer"):
    """1.0 when the completion is exactly ``<think>...</think>`` followed by
    ``<answer>...</answer>``, with only whitespace before, between and after, and each of the
    four tags exactly once; else 0.0.

    ``partial=True``: a completion without that exact structure earns 0.2 for each of the
    four tags that appears exactly once (at most 0.8: order, stray text or empty content
    keep it below 1.0). ``require_content=True``: both tag bodies must hold non-whitespace.
    ``think_tag``/``answer_tag`` rename the tags (e.g. ``reasoning``).
    """
    for tag in (think_tag, answer_tag):
        if not tag or re.search(r"[\s<>/]", tag):
            raise ValueError(f"tag name {tag!r} must be non-empty, without spaces, '<', '>' or '/'")

    def reward(completions: List[Any], **_: Any) -> List[float]:
        return [think_answer_score(completion_text(c), think_tag, answer_tag, partial, require_content)
                for c in completions]

    reward.__name__ = "think_answer_format"
    return reward


_FLAGS = {"IGNORECASE": re.IGNORECASE, "I": re.IGNORECASE, "DOTALL": re.DOTALL, "S": re.DOTALL,
          "MULTILINE": re.MULTILINE, "M": re.MULTILINE, "VERBOSE": re.VERBOSE, "X": re.VERBOSE,
          "ASCII": re.ASCII, "A": re.ASCII}


def _flags(flags: Union[int, str, Sequence[str], None]) -> int:
    if flags is None:
        return 0
    if isinstance(flags, int):
        return flags
    names = [f.strip() for f in flags.split("|")] if isinstance(flags, str) else [str(f).strip() for f in flags]
    out = 0
    for name in filter(None, names):
        if name.upper() not in _FLAGS:
            raise ValueError(f"unknown regex flag '{name}'; valid choices: {', '.join(sorted(set(_FLAGS)))}")
        out |= _FLAGS[name.upper()]
    return out


@REWARDS.register("regex_match")
def regex_match(pattern: str, mode: str = "search", flags: Union[int, str, Sequence[str], None] = None,
                score: float = 1.0, miss_score: float = 0.0):
    """``score`` (1.0) when the completion matches ``pattern``, else ``miss_score`` (0.0).

    ``mode``: ``search`` (anywhere; anchor with ``^``/``$`` yourself), ``match`` (at the
    start) or ``fullmatch`` (the whole completion). ``flags``: names such as
    ``"DOTALL|IGNORECASE"`` or a list of them. An invalid pattern is a config error.
    """
    if mode not in ("search", "match", "fullmatch"):
        raise ValueError(f"mode={mode!r} is not valid; valid choices: search, match, fullmatch")
    try:
        regex = re.compile(pattern, _flags(flags))
    except re.error as e:
        raise ValueError(f"invalid pattern {pattern!r}: {e}") from None
    method = getattr(regex, mode)
    hit, miss = float(score), float(miss_score)

    def reward(completions: List[Any], **_: Any) -> List[float]:
        return [hit if method(completion_text(c)) else miss for c in completions]

    reward.__name__ = "regex_match"
    return reward
