"""Math answer rewards: math-verify reads the completion's final answer and compares it with the gold one.

``math_accuracy`` finds the completion's answer in this order, then asks math-verify's
``verify`` whether it equals the ``answer`` column (``12/36`` = ``1/3``, ``5 \\leq x`` =
``x >= 5``, ``14{,}916`` = ``14916``, ``[2, 5)`` as an interval, ``\\{1, 2\\}`` as a set):

1. the last complete ``\\boxed{...}``/``\\fbox{...}`` (several boxes are not joined into a set);
2. else the last non-empty ``<answer>...</answer>`` (the text envs' format);
3. else math-verify's own extraction over the whole completion, with its
   ``LatexExtractionConfig(boxed_match_priority=0)`` and ``ExprExtractionConfig``: the
   Minerva "The final answer is $x$. I hope it is correct." form, "answer: ...", the last
   ``$...$``/``\\(...\\)`` or number;
4. else, or when step 3 found only a sum/product of bare numbers (``27+38``, an echoed
   arithmetic prompt that math-verify would evaluate to the right answer), the last number
   in the text (``extract_answer``: ``27+38`` gives 38).

Chat tokens (``<|im_end|>``, ``</s>``, ...) are removed first (math-verify reads
``1/2<|im_end|>`` as 1) and a Unicode minus becomes ``-``. No answer scores 0.0.

How short strings (a box's or tag's content, a gold answer, an ``answers_match`` prediction)
reach math-verify (``parse`` needs LaTeX delimiters to read bare LaTeX:
``parse("\\frac12")`` finds nothing, ``parse("2\\sqrt{3}")`` returns 2, ``parse("x \\geq 5")`` 5):

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

__all__ = ["extract_answer", "extract_boxed", "parse_completion", "answers_match", "math_accuracy"]

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


# end-of-turn / special tokens a decoded completion may end with
_CHAT_TOKENS = re.compile(r"<\|[^|<>\s]{1,40}\|>|</s>|<eos>|<(?:start|end)_of_turn>")


def _clean(text: str) -> str:
    """Completion text without chat tokens, with a Unicode minus as ``-``."""
    return _CHAT_TOKENS.sub(" ", text).replace("−", "-")


_LITERAL_ARITHMETIC = re.compile(r"[\d.,\s()/*×÷+-]+")
_BINARY_OP = re.compile(r"[\d)]\s*[-+*×÷]")


def _is_literal_arithmetic(found: str) -> bool:
    """Whether math-verify's match is a sum/product of bare numbers (``27+38``, ``3 * 4``):
    an echoed arithmetic prompt, which math-verify would evaluate and count as the answer.
    A fraction ``2/3`` or a lone ``-5`` is an answer; so is anything in a box or tag."""
    found = found.strip().rstrip(".")
    return bool(_LITERAL_ARITHMETIC.fullmatch(found) and _BINARY_OP.search(found))


def _extraction_config() -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # boxed answers first, then math-verify's own order (final-answer phrases, "answer:",
    # the rightmost LaTeX environment or number)
    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def parse_completion(text: Any, *, whole_text: bool = True, timeout: Optional[int] = None) -> list:
    """math-verify's parse of the completion's final answer (see the module docstring); [] if none.

    ``whole_text=False`` only looks at ``\\boxed`` and ``<answer>`` answers.
    """
    if text is None:
        return []
    text = _clean(completion_text(text))
    boxed = extract_boxed(text)
    if boxed is not None:
        # math-verify reads the box itself; where that leaves only its string fallback (it
        # does for \boxed{50\%}), the content read as a short string may still parse
        found = list(_parse_cached(f"$\\boxed{{{boxed}}}$", timeout))
        if all(isinstance(f, str) for f in found):
            found = list(_parse_cached(boxed, timeout)) or found
        return found
    tags = [t.strip() for t in _ANSWER_TAG.findall(text)]
    tags = [t for t in tags if t]
    if tags:
        return list(_parse_cached(tags[-1], timeout))
    if not whole_text:
        return []
    from math_verify import parse

    found = parse(text, _extraction_config(), parsing_timeout=timeout)
    if found and not any(isinstance(f, str) and _is_literal_arithmetic(f) for f in found):
        return found
    last = extract_answer(text)
    return list(_parse_cached(last, timeout)) if last is not None else []


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
        result = parse(candidate, _extraction_config(), parsing_timeout=timeout)
        if result:
            return result
    return []


def _matches(gold: Any, pred_parsed: list, timeout: Optional[int], float_rounding: int,
             numeric_precision: int, strict: bool) -> bool:
    """math-verify's ``verify`` of a parsed prediction against the gold answer; an unparsable
    gold raises ValueError (checked only when there is a prediction, as before)."""
    from math_verify import verify

    if not pred_parsed:
        return False
    gold_text = _gold_text(gold)
    gold_parsed = list(_parse_cached(gold_text, timeout))
    if not gold_parsed:
        raise ValueError(f"cannot parse the gold answer {gold_text!r}")
    return bool(verify(gold_parsed, pred_parsed, float_rounding=float_rounding,
                       numeric_precision=numeric_precision, strict=strict, timeout_seconds=timeout))


def answers_match(gold: Any, prediction: Optional[str], *, timeout_seconds: Optional[int] = 5,
                  float_rounding: int = 6, numeric_precision: int = 15, strict: bool = True) -> bool:
    """Whether ``prediction`` (an extracted answer) equals ``gold`` according to math-verify.

    Raises ValueError when the gold answer is None or cannot be parsed (a data problem
    worth seeing: in a pipeline it is logged and counted as a failure).
    """
    if prediction is None or not str(prediction).strip():
        return False
    timeout = _timeout(timeout_seconds)
    return _matches(gold, list(_parse_cached(str(prediction), timeout)), timeout, float_rounding,
                    numeric_precision, strict)


@REWARDS.register("math_accuracy")
def math_accuracy(answer_column: str = "answer", fallback_last_number: bool = True,
                  timeout_seconds: Optional[int] = 5, float_rounding: int = 6,
                  numeric_precision: int = 15, strict: bool = True):
    """1.0 when the completion's final answer equals the gold answer, else 0.0.

    ``answer_column``: dataset column with the gold answers (a ``\\boxed{}`` or GSM8K
    ``#### x`` in it is extracted; plain strings such as ``[2, 5)`` are read as LaTeX).
    ``fallback_last_number=False`` only accepts ``\\boxed`` and ``<answer>`` answers (no
    final-answer phrase, LaTeX or number from the prose). ``timeout_seconds`` bounds each
    math-verify parse/compare (main thread only). ``float_rounding``/``numeric_precision``/
    ``strict`` go to ``math_verify.verify``; with ``float_rounding=6``, ``0.333333`` equals
    ``1/3``; ``strict=True`` keeps ``x > 5`` apart from ``x >= 5``. A gold answer math-verify
    cannot parse raises (the pipeline logs it as a failure).
    """
    if timeout_seconds is not None and int(timeout_seconds) != timeout_seconds:
        raise ValueError("timeout_seconds must be a whole number of seconds (math-verify uses signal.alarm)")

    def reward(completions: List[Any], **columns: Any) -> List[float]:
        if answer_column not in columns:
            raise KeyError(f"math_accuracy needs the '{answer_column}' column; got {sorted(columns)}")
        timeout = _timeout(timeout_seconds)
        scores = []
        for completion, gold in zip(completions, columns[answer_column]):
            pred = parse_completion(completion, whole_text=fallback_last_number, timeout=timeout)
            ok = _matches(gold, pred, timeout, float_rounding, numeric_precision, strict)
            scores.append(1.0 if ok else 0.0)
        return scores

    reward.__name__ = "math_accuracy"
    return reward
