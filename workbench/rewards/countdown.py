"""Countdown reward: the completion's equation must reach ``target`` from the given ``numbers``.

The equation is the content of the last non-empty ``<answer>...</answer>``, else the last
non-empty line of the completion. One trailing ``= N`` is allowed (``(3+5)*2 = 16``); N must
then equal the value. Unicode operators are read as ASCII (``−`` ``–`` minus, ``×`` ``·``
times, ``÷`` divide).

Parsing is safe: :mod:`ast` in ``eval`` mode, and only integer literals, the binary operators
``+ - * /`` and parentheses are accepted. Names, calls, attributes, ``**``, ``//``, ``%``,
unary signs, float literals, comparisons and anything else make the equation malformed; it is
never passed to ``eval``. Every literal must be one of ``numbers``, each used at most as often
as it is given (``use_all=True``: exactly as often, TinyZero's rule), before anything is
computed, so values stay small. Arithmetic is exact (:class:`fractions.Fraction`), so
``5*(5-1/5)`` is exactly 24; a division by zero makes the equation wrong. The value must
equal ``target`` exactly, or within ``tolerance`` (for a target given as a float).
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction
from typing import Any, Dict, List, Optional, Sequence

from workbench.registry import REWARDS
from workbench.rewards.base import completion_text

__all__ = ["countdown", "extract_equation", "parse_equation", "check_equation"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_UNICODE_OPS = str.maketrans({"−": "-", "–": "-", "—": "-", "×": "*", "·": "*", "∗": "*", "÷": "/",
                              "（": "(", "）": ")"})
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}
MAX_EQUATION_CHARS = 512  # longer text is not an equation (and bounds the parser's work)
MAX_LITERAL_DIGITS = 30  # a literal this long cannot be a countdown number


class MalformedEquation(ValueError):
    """The text is not an equation of integers, + - * / and parentheses."""


def extract_equation(text: Any) -> Optional[str]:
    """The last non-empty ``<answer>`` content, else the last non-empty line; None if empty."""
    text = completion_text(text)
    tags = [t.strip() for t in _ANSWER_TAG.findall(text)]
    tags = [t for t in tags if t]
    if tags:
        return tags[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def parse_equation(equation: str):
    """(expression AST, claimed result or None) of ``equation``; raises MalformedEquation."""
    text = equation.translate(_UNICODE_OPS).strip()
    if not text or len(text) > MAX_EQUATION_CHARS:
        raise MalformedEquation("empty or too long")
    claimed = None
    if "=" in text:
        left, sep, right = text.partition("=")
        if "=" in right or not re.fullmatch(r"\s*\d{1,%d}\s*" % MAX_LITERAL_DIGITS, right):
            raise MalformedEquation("only one trailing '= <integer>' is allowed")
        text, claimed = left, int(right)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise MalformedEquation(f"does not parse: {type(e).__name__}") from None
    _check_node(tree.body)
    return tree.body, claimed


def _check_node(node: ast.AST) -> None:
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _OPS:
            raise MalformedEquation(f"operator {type(node.op).__name__} is not allowed")
        _check_node(node.left)
        _check_node(node.right)
    elif isinstance(node, ast.Constant):
        if type(node.value) is not int:  # bool, float, complex, str ... are not countdown numbers
            raise MalformedEquation(f"literal {node.value!r} is not an integer")
        if len(str(node.value)) > MAX_LITERAL_DIGITS:
            raise MalformedEquation("literal too large")
    else:
        raise MalformedEquation(f"{type(node).__name__} is not allowed")


def _literals(node: ast.AST) -> List[int]:
    if isinstance(node, ast.BinOp):
        return _literals(node.left) + _literals(node.right)
    return [node.value]


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.BinOp):
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    return Fraction(node.value)


def _as_numbers(value: Any) -> List[int]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str):
        value = re.findall(r"-?\d+", value)
    numbers = []
    for v in value:
        f = float(v)
        if f != int(f):
            raise ValueError(f"countdown numbers must be integers, got {v!r}")
        numbers.append(int(f))
    return numbers


def _as_target(value: Any) -> Fraction:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str):
        return Fraction(value.strip())
    return Fraction(value)


def check_equation(equation: Optional[str], numbers: Sequence[int], target: Any, *, use_all: bool = False,
                   tolerance: float = 1e-6) -> Dict[str, bool]:
    """``{"well_formed", "valid_numbers", "correct"}`` for one equation (see the module doc)."""
    result = {"well_formed": False, "valid_numbers": False, "correct": False}
    if equation is None:
        return result
    try:
        tree, claimed = parse_equation(equation)
    except MalformedEquation:
        return result
    result["well_formed"] = True
    used, given = Counter(_literals(tree)), Counter(_as_numbers(numbers))
    ok = all(used[k] <= given[k] for k in used)
    if use_all:
        ok = ok and used == given
    result["valid_numbers"] = ok
    if not ok:
        return result
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        return result
    goal = _as_target(target)
    close = value == goal or abs(float(value - goal)) <= tolerance
    if claimed is not None:
        close = close and (claimed == value or abs(float(claimed - value)) <= tolerance)
    result["correct"] = bool(close)
    return result


@REWARDS.register("countdown")
def countdown(format_score: float = 0.0, numbers_column: str = "numbers", target_column: str = "target",
              use_all: bool = False, tolerance: float = 1e-6):
    """1.0 when the completion's equation reaches the target with the given numbers, else 0.0.

    ``format_score``: score of a well-formed equation (integers, + - * /, parentheses) that is
    wrong: a number not given or used too often, a division by zero, or another value
    (TinyZero uses 0.1). ``numbers_column``/``target_column``: the dataset columns (a list of
    ints, or a string such as ``"[3, 5, 2]"``; an int or numeric string). ``use_all=True``:
    every number must be used exactly as often as given. ``tolerance``: accepted
    ``|value - target|`` (arithmetic is exact; this is for float targets).
    Sub-scores ``well_formed`` and ``valid_numbers`` are logged as ``countdown/<sub>``.
    """
    format_score, tolerance = float(format_score), float(tolerance)
    if not 0.0 <= format_score < 1.0:
        raise ValueError(f"format_score must be in [0, 1), got {format_score}")
    if not tolerance >= 0.0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")

    def reward(completions: List[Any], **columns: Any) -> Dict[str, List[float]]:
        for col in (numbers_column, target_column):
            if col not in columns:
                raise KeyError(f"countdown needs the '{col}' column; got {sorted(columns)}")
        out: Dict[str, List[float]] = {"score": [], "well_formed": [], "valid_numbers": []}
        for completion, numbers, target in zip(completions, columns[numbers_column], columns[target_column]):
            r = check_equation(extract_equation(completion), numbers, target, use_all=use_all, tolerance=tolerance)
            out["score"].append(1.0 if r["correct"] else format_score if r["well_formed"] else 0.0)
            out["well_formed"].append(float(r["well_formed"]))
            out["valid_numbers"].append(float(r["valid_numbers"]))
        return out

    reward.__name__ = "countdown"
    return reward
