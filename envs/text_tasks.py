"""Verifiable text tasks: synthetic generators with a difficulty knob, and JSONL/Parquet datasets.

A task hands out items ``{"question": str, "answer": str, ...}``; extra keys become reward
columns (e.g. countdown's ``numbers`` and ``target``). Held-out items come from a separate
random stream (synthetic) or split (datasets), so evaluation never sees training items.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Optional

from workbench.registry import ConfigError, Registry, add_registry

TASKS: Registry = add_registry("text_tasks", Registry("text task"))


@TASKS.register("arithmetic")
class Arithmetic:
    """``a op b`` with ``digits``-digit operands; the answer is the exact integer result."""

    def __init__(self, digits: int = 2, ops: str = "+-", template: str = "{a}{op}{b}=", terms: int = 2) -> None:
        if digits < 1 or terms < 2 or not set(ops) <= set("+-*"):
            raise ConfigError("arithmetic task: digits >= 1, terms >= 2, ops from '+-*'")
        self.digits, self.ops, self.template, self.terms = digits, ops, template, terms

    def make(self, rng: random.Random) -> Dict[str, Any]:
        hi = 10**self.digits - 1
        nums = [rng.randint(0, hi) for _ in range(self.terms)]
        ops = [rng.choice(self.ops) for _ in range(self.terms - 1)]
        expr = str(nums[0]) + "".join(f"{op}{n}" for op, n in zip(ops, nums[1:]))
        question = self.template.format(a=nums[0], op=ops[0], b=nums[1]) if self.terms == 2 else expr + "="
        return {"question": question, "answer": str(eval(expr)), "operands": nums, "ops": "".join(ops)}  # noqa: S307

    @staticmethod
    def flawed_answer(item: Dict[str, Any]) -> str:
        """What a teacher who forgets to carry writes: column-wise sums with every carry dropped
        (27+38 -> 55). Same as the true answer when no column carries, or for non-additions."""
        if item.get("ops") != "+" * (len(item["operands"]) - 1):
            return item["answer"]
        digits = [str(n)[::-1] for n in item["operands"]]
        width = max(len(d) for d in digits)
        columns = [sum(int(d[i]) for d in digits if i < len(d)) for i in range(width)]
        out = "".join(str(c % 10) for c in columns[:-1]) + str(columns[-1])[::-1]
        return str(int(out[::-1]))


@TASKS.register("countdown")
class Countdown:
    """Reach ``target`` from ``count`` numbers with + - * / (each number at most once).

    Targets are built from a random expression over the numbers, so every item is solvable.
    """

    TEMPLATE = ("Using the numbers {numbers}, create an equation that equals {target}. You can use + - * / and each "
                "number at most once. Show your reasoning in <think> </think> and give the equation in <answer> </answer>.")

    def __init__(self, count: int = 3, max_number: int = 20, template: Optional[str] = None) -> None:
        if count < 2:
            raise ConfigError("countdown task: count >= 2")
        self.count, self.max_number, self.template = count, max_number, template or self.TEMPLATE

    def make(self, rng: random.Random) -> Dict[str, Any]:
        while True:
            numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
            used = rng.sample(numbers, rng.randint(2, self.count))
            expr = str(used[0])
            for n in used[1:]:
                expr = f"({expr}{rng.choice('+-*')}{n})"
            target = eval(expr)  # noqa: S307 - digits and operators we generated
            if 0 < target <= 1000:
                question = self.template.format(numbers=numbers, target=target)
                return {"question": question, "answer": str(target), "numbers": numbers, "target": target, "equation": expr}


@TASKS.register("dataset")
class Dataset:
    """Question/answer rows through HF datasets: a local JSONL/Parquet file, or a hub dataset
    (``path: openai/gsm8k``, ``config_name: main``, splits by name) on machines that can reach
    the hub. ``answer_delimiter`` keeps the text after it (GSM8K writes "reasoning #### 72").
    Held-out items come from ``eval_path`` / ``eval_split``, else the first ``eval_fraction``.
    """

    def __init__(self, path: str, question_field: str = "question", answer_field: str = "answer",
                 answer_delimiter: Optional[str] = "####", eval_fraction: float = 0.1, eval_path: Optional[str] = None,
                 config_name: Optional[str] = None, split: str = "train", eval_split: Optional[str] = None) -> None:
        from pathlib import Path

        if Path(path).exists() and eval_split and not eval_path:
            raise ConfigError(f"env.task_kwargs.eval_split={eval_split!r} names a hub split, but {path} is a local file: give "
                              f"the held-out file as env.task_kwargs.eval_path=FILE, or set env.task_kwargs.eval_split=null "
                              f"to hold out the first eval_fraction of its rows")
        fields = (question_field, answer_field, answer_delimiter, config_name)
        self.train = self._load(path, split, *fields, what="env.task_kwargs.path")
        if eval_path or eval_split:
            self.held_out = self._load(eval_path or path, eval_split or "train", *fields, what="env.task_kwargs.eval_path")
            held = {x["question"] for x in self.held_out}
            if all(x["question"] in held for x in self.train):
                raise ConfigError(f"every row of {path} is also in the held-out set ({eval_path or path}); give "
                                  f"env.task_kwargs.eval_path a separate file of held-out rows")
        else:
            cut = max(1, int(len(self.train) * eval_fraction))
            self.held_out, self.train = self.train[:cut], self.train[cut:]
        if not self.train:
            raise ConfigError(f"dataset '{path}' has too few rows to split off an evaluation set")

    @staticmethod
    def _load(path: str, split: str, q: str, a: str, delimiter: Optional[str], config_name: Optional[str],
              what: str) -> List[Dict[str, Any]]:
        from pathlib import Path

        if Path(path).exists():
            from envs.datafiles import read_rows

            rows = read_rows(Path(path), what, q)
        elif path.endswith((".jsonl", ".json", ".csv", ".parquet")) or path.startswith((".", "/")):
            raise ConfigError(f"{what}: dataset file not found: {path}")
        else:
            import datasets

            try:
                table = datasets.load_dataset(path, config_name, split=split)
            except Exception as e:  # offline, unknown name, bad split: one clear line
                raise ConfigError(f"cannot load dataset '{path}' (split {split}): {str(e).splitlines()[0]}") from None
            missing = [f for f in (q, a) if f not in table.column_names]
            if missing:
                raise ConfigError(f"dataset '{path}' has no column(s) {missing}; columns: {table.column_names}")
            rows = [(f"row {i}", row) for i, row in enumerate(table)]
        items = []
        for where, row in rows:
            for key in (q, a):
                if row.get(key) is None:
                    raise ConfigError(f"{path} {where} has no '{key}' (it has {sorted(row)}); every row needs a text "
                                      f"'{q}' and a non-empty '{a}' (env.task_kwargs.question_field / answer_field)")
            answer = str(row[a])
            if delimiter and delimiter in answer:
                answer = answer.split(delimiter)[-1].strip()
            if not isinstance(row[q], str) or not answer:
                raise ConfigError(f"{path} {where}: malformed sample (needs a text '{q}' and a non-empty '{a}')")
            extra = {k: v for k, v in row.items() if k not in (q, a)}
            items.append({**extra, "question": row[q], "answer": answer})
        return items

    def make(self, rng: random.Random) -> Dict[str, Any]:
        return dict(rng.choice(self.train))

    def eval_items(self, n: int) -> List[Dict[str, Any]]:
        return [dict(x) for x in self.held_out[:n]]


def build_task(name: str, kwargs: Dict[str, Any]):
    cls = TASKS.get(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"env.task_kwargs for '{name}': {e}") from None


def eval_items(task, n: int, seed: int) -> List[Dict[str, Any]]:
    """A fixed held-out set: the dataset's split, or a synthetic stream seeded apart from training."""
    if hasattr(task, "eval_items"):
        return task.eval_items(n)
    rng = random.Random(f"eval-{seed}")
    return [task.make(rng) for _ in range(n)]
