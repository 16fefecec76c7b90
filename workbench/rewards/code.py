"""Code reward: run model-written Python against unit tests in the sandbox.

The code is the last fenced ```python block of the completion (``py``/``python3`` and
unlabelled fences too, a python one preferred; an unclosed last fence counts up to the end
of the text), else the whole completion. The ``tests`` column holds, per sample, a list of
test snippets (e.g. ``assert f(2) == 4``); the reward is the fraction that pass, as
reported by :func:`workbench.rewards.sandbox.run_tests`. The sandbox's isolation mode is
logged with it (``reward/code_tests/namespace_isolation``: 1 namespace, 0 basic).
"""
from __future__ import annotations

import dataclasses
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

from workbench.registry import REWARDS, ConfigError
from workbench.rewards.base import completion_text

__all__ = ["extract_code", "code_tests"]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON = {"python", "py", "python3", "py3"}


def extract_code(text: str) -> str:
    """The last ```python block (else the last unlabelled block), else the whole text."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    for wanted in (lambda lang: lang in _PYTHON, lambda lang: lang == ""):
        chosen = [body for lang, body in blocks if wanted(lang)]
        if chosen:
            return chosen[-1].strip("\n")
    return text


def _tests_of(value: Any) -> List[str]:
    if isinstance(value, str):
        try:  # a JSON list stored as a string
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        value = parsed if isinstance(parsed, list) else [value]
    tests = [str(t) for t in value]
    if not tests:
        raise ValueError("no tests for this sample")
    return tests


@REWARDS.register("code_tests")
def code_tests(tests_column: str = "tests", workers: int = 1, isolation: str = "namespace", **limits: Any):
    """Fraction of the sample's unit tests that the extracted code passes (0.0 to 1.0).

    ``tests_column``: the column with each sample's list of tests (a JSON list string
    works too; a plain string is one test). ``workers``: samples run concurrently (threads
    around the sandbox's subprocesses). ``isolation``: ``namespace`` (default; a ConfigError
    where the host cannot provide it) or ``basic`` (explicit opt-in to the weaker mode).
    Any other option is a field of ``workbench.rewards.sandbox.SandboxLimits`` (time,
    memory, ...). A sample without tests raises (the pipeline logs it as a failure).
    """
    from workbench.rewards.sandbox import SandboxLimits, check_isolation, run_tests

    try:
        sandbox_limits = SandboxLimits(**limits)
    except TypeError as e:
        valid = ""
        if dataclasses.is_dataclass(SandboxLimits):
            valid = "; valid options: tests_column, workers, isolation, " + ", ".join(
                f.name for f in dataclasses.fields(SandboxLimits))
        raise ConfigError(f"reward 'code_tests': bad sandbox limits {sorted(limits)}: {e}{valid}") from None
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    try:
        check_isolation(isolation)  # refuse at build time, not once per sample
    except ConfigError as e:
        raise ConfigError(f"reward 'code_tests': {e}") from None
    isolated = 1.0 if isolation == "namespace" else 0.0

    def one(completion: Any, tests: Any) -> float:
        result = run_tests(extract_code(completion_text(completion)), _tests_of(tests), sandbox_limits,
                           isolation=isolation)
        return float(result.fraction)

    def reward(completions: List[Any], **columns: Any) -> Dict[str, List[float]]:
        if tests_column not in columns:
            raise KeyError(f"code_tests needs the '{tests_column}' column; got {sorted(columns)}")
        pairs = list(zip(completions, columns[tests_column]))
        if int(workers) == 1 or len(pairs) <= 1:
            scores = [one(c, t) for c, t in pairs]
        else:
            with ThreadPoolExecutor(max_workers=min(int(workers), len(pairs))) as pool:
                scores = list(pool.map(lambda p: one(*p), pairs))
        return {"score": scores, "namespace_isolation": [isolated] * len(scores)}  # "score" is the reward

    reward.__name__ = "code_tests"
    return reward
