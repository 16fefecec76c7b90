"""Math answer rewards: extract the final answer, compare it with the gold one via math-verify.

``extract_answer`` takes, in order, the last complete ``\\boxed{...}`` (or ``\\fbox{...}``;
nested braces allowed), else the last non-empty ``<answer>...</answer>``, else the last
number in the text. ``math_accuracy`` scores 1.0 when math-verify finds the extracted
answer equivalent to the ``answer`` column (``12/36`` = ``1/3``, ``0.5`` = ``\\frac{1}{2}``,
``1,000`` = ``1000``), else 0.0; no extractable answer scores 0.0.

How the strings reach math-verify (``parse`` needs LaTeX delimiters to read bare LaTeX:
``parse("\\frac12")`` finds nothing and ``parse("2\\sqrt{3}")`` returns 2):

* text that already has ``$``/``\\(``/``\\[`` delimiters is parsed as it is;
* text with prose words (``18 dollars``, ``5 apples``) is parsed as it is, which lets
  math-verify pick the number out of the sentence (inside ``$...$`` the words would turn
  into products of symbols);
* anything else is wrapped in ``$...$``;
* if that finds nothing, the other way is tried.

math-verify's ``parse``/``verify`` time out with ``signal.alarm``, which only works in the
main thread; off the main thread they run without a timeout.
"""
from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any, List, Optional

from workbench.registry import REWARDS
from workbench.rewards.base import completion_text

__all__ = ["extract_answer", "extract_boxed", "answers_match", "math_accuracy"]

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# the last number: optional sign (not after a word/closing bracket, so "5-3" gives 3), an
# integer with or without thousands separators, optional decimals, optional "/denominator";
# or a leading-dot decimal; or a \frac{a}{b} of integers
_NUMBER = re.compile(
    r"(?<![\w.])"
    r"(?:"
    r"(?:(?<![\w)\]}])[-−])?\\[dt]?frac\{\d+\}\{\d+\}"
    r"|(?:(?<![\w)\]}])[-−])?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?(?:/\d+(?!\d)(?!\.\d))?"
    r"|(?:(?<![\w)\]}])[-−])?\.\d+"
    r")"
)


def _balanced(text: str, start: int) -> Optional[str]:
    """Content of the brace group opening at ``text[start] == '{'``; None if unclosed.
    Escaped braces ``\\{`` ``\\}`` do not count."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}`` (``\\boxed 5`` too)."""
    found = None
    for m in _BOXED.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            content = _balanced(text, i)
        else:  # \boxed 5 : one token
            tok = re.match(r"[^\s$]+", text[i:])
            content = tok.group(0) if tok and m.end() < i else None
        if content is not None and content.strip():
            found = content.strip()
    return found


def extract_answer(text: Any) -> Optional[str]:
    """The final answer in ``text`` or None.

    The last ``\\boxed{...}`` (nested braces kept: ``\\boxed{\\frac{1}{2}}`` gives
    ``\\frac{1}{2}``), else the last non-empty ``<answer>...</answer>`` (stripped), else the
    last number: negatives, decimals, fractions (``3/4``, ``\\frac{3}{4}``), thousands
    separators, which are removed (``1,000`` gives ``1000``). A Unicode minus becomes ``-``.
    """
    if text is None:
        return None
    text = completion_text(text)
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    tags = [t.strip() for t in _ANSWER_TAG.findall(text)]
    tags = [t for t in tags if t]
    if tags:
        return tags[-1]
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    last = numbers[-1].replace("−", "-")
    if not last.lstrip("-").startswith("\\"):
        last = last.replace(",", "")
    return last


def _gold_text(gold: Any) -> str:
    """The gold answer as text: a ``\\boxed{}`` in it wins, GSM8K's ``#### 72`` gives 72."""
    if gold is None:
        raise ValueError("missing gold answer (None)")
    text = str(gold).strip()
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    return text


_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[")
_MATH_WORDS = {
    "sin", "cos", "tan", "cot", "sec", "csc", "log", "exp", "sqrt", "frac", "dfrac", "tfrac", "pi",
    "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "infty", "inf", "min", "max", "mod", "gcd", "lcm",
}
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")


def _has_prose(text: str) -> bool:
    # words inside \text{...}/\mathrm{...} are LaTeX, not prose
    text = re.sub(r"\\(?:text|mathrm|textbf|mbox|operatorname)\{[^{}]*\}", " ", text)
    return any(w.lower() not in _MATH_WORDS for w in _WORD.findall(text))


def _timeout(seconds: Optional[int]) -> Optional[int]:
    # math-verify times out with signal.alarm: main thread only
    if seconds is None or threading.current_thread() is not threading.main_thread():
        return None
    return seconds


def _strip_delimiters(text: str) -> str:
    t = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if t.startswith(left) and t.endswith(right) and len(t) > len(left) + len(right):
            inner = t[len(left) : -len(right)]
            if "$" not in inner:
                return inner.strip()
    return t


@lru_cache(maxsize=4096)
def _parse_cached(text: str, timeout: Optional[int]) -> tuple:
    return tuple(_parse(text, timeout))


def _parse(text: str, timeout: Optional[int]) -> list:
    from math_verify import parse

    text = text.strip()
    if not text:
        return []
    inner = _strip_delimiters(text)
    wrapped = f"${inner}$"
    if _DELIMITED.search(inner):
        order = [text]
    elif _has_prose(inner):
        order = [inner, wrapped]
    else:
        order = [wrapped, inner]
    for candidate in order:
        result = parse(candidate, parsing_timeout=timeout)
        if result:
            return result
    return []


def answers_match(gold: Any, prediction: Optional[str], *, timeout_seconds: Optional[int] = 5,
                  float_rounding: int = 6, numeric_precision: int = 15, strict: bool = True) -> bool:
    """Whether ``prediction`` (an extracted answer) equals ``gold`` according to math-verify.

    Raises ValueError when the gold answer is None or cannot be parsed (a data problem
    worth seeing: in a pipeline it is logged and counted as a failure).
    """
    from math_verify import verify

    if prediction is None or not str(prediction).strip():
        return False
    timeout = _timeout(timeout_seconds)
    gold_text = _gold_text(gold)
    gold_parsed = list(_parse_cached(gold_text, timeout))
    if not gold_parsed:
        raise ValueError(f"cannot parse the gold answer {gold_text!r}")
    pred_parsed = list(_parse_cached(str(prediction), timeout))
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, float_rounding=float_rounding,
                       numeric_precision=numeric_precision, strict=strict, timeout_seconds=timeout))


@REWARDS.register("math_accuracy")
def math_accuracy(answer_column: str = "answer", fallback_last_number: bool = True,
                  timeout_seconds: Optional[int] = 5, float_rounding: int = 6,
                  numeric_precision: int = 15, strict: bool = True):
    """1.0 when the completion's final answer equals the gold answer, else 0.0.

    ``answer_column``: dataset column with the gold answers (a ``\\boxed{}`` or GSM8K
    ``#### x`` in it is extracted). ``fallback_last_number=False`` only accepts ``\\boxed``
    and ``<answer>`` answers. ``timeout_seconds`` bounds each math-verify parse/compare (main
    thread only). ``float_rounding``/``numeric_precision``/``strict`` go to
    ``math_verify.verify``; note that with ``float_rounding=6``, ``0.333333`` equals ``1/3``.
    A gold answer math-verify cannot parse raises (the pipeline logs it as a failure).
    """
    if timeout_seconds is not None and int(timeout_seconds) != timeout_seconds:
        raise ValueError("timeout_seconds must be a whole number of seconds (math-verify uses signal.alarm)")

    def reward(completions: List[Any], **columns: Any) -> List[float]:
        if answer_column not in columns:
            raise KeyError(f"math_accuracy needs the '{answer_column}' column; got {sorted(columns)}")
        scores = []
        for completion, gold in zip(completions, columns[answer_column]):
            text = completion_text(completion)
            pred = extract_answer(text)
            if pred is not None and not fallback_last_number and extract_boxed(text) is None and not any(
                t.strip() for t in _ANSWER_TAG.findall(text)
            ):
                pred = None
            ok = answers_match(gold, pred, timeout_seconds=timeout_seconds, float_rounding=float_rounding,
                               numeric_precision=numeric_precision, strict=strict)
            scores.append(1.0 if ok else 0.0)
        return scores

    reward.__name__ = "math_accuracy"
    return reward
