"""Reward functions, their registry entries, and the pipeline that combines them.

A *reward function* is a TRL-style callable::

    fn(completions: list[str], **columns) -> list[float] | dict[str, list[float]]

``columns`` are per-sample lists taken from the dataset (``answer``, ``tests``, ``prompt``,
...); every reward accepts ``**kwargs`` and ignores the columns it does not use. A returned
dict holds named sub-scores (EasyR1 style): the function's score is their mean, unless the
dict has a key ``"score"``, which is then the score and the other keys are logged only.

A *factory* is registered by name in :data:`workbench.registry.REWARDS`: a function or
class that, called with config options, returns the reward function. A config entry is
``{name: math_accuracy, weight: 1.0, **options}``; :class:`RewardPipeline` builds such a
list, calls every reward on a batch and sums the scores with their weights. A reward that
raises, returns a wrong shape or a non-finite score does not stop a run: the samples that
fail get ``failure_score``, are counted, and a warning is logged.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from workbench.registry import REWARDS, ConfigError

logger = logging.getLogger(__name__)

RewardOutput = Union[List[float], Dict[str, List[float]]]
RewardFn = Callable[..., RewardOutput]

# keys of a pipeline spec that belong to the pipeline, not to the reward factory
SPEC_KEYS = ("name", "weight", "alias", "failure_score")
# warnings with a traceback summary per reward call; the rest are only counted
_MAX_LOGGED_FAILURES = 3


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or (TRL conversational format) the content of
    the last message of a list of ``{"role", "content"}`` dicts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping) and "content" in completion:
        return str(completion["content"])
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def _options_of(factory: Callable) -> Tuple[Optional[List[str]], List[str]]:
    """(accepted option names or None when it takes **kwargs, required option names)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: accept anything
        return None, []
    names, required, var_kw = [], [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return (None if var_kw else names), required


@functools.lru_cache(maxsize=None)
def _options_schema(factory: Callable) -> type:
    """A dataclass of the factory's typed options, each ``Optional[<annotation>] = None``, so
    OmegaConf can check given values the way it checks every config section. An annotation
    OmegaConf cannot type (``Union[int, str]``, ``Sequence[...]``) becomes ``Any``."""
    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: leave every option untyped
        hints = {}
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        params = []
    fields = []
    for name in [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]:
        typed = (name, Optional[hints.get(name, Any)], dataclasses.field(default=None))
        try:
            OmegaConf.structured(dataclasses.make_dataclass("Option", [typed]))
        except OmegaConfBaseException:
            typed = (name, Any, dataclasses.field(default=None))
        fields.append(typed)
    return dataclasses.make_dataclass(f"{getattr(factory, '__name__', 'reward')}_options", fields)


def check_reward_options(name: str, options: Mapping[str, Any], where: str = "") -> None:
    """Check a reward's options against its factory's signature without calling it (nothing
    loads): an unknown reward or option, a missing required option or a value of the wrong
    type raises :class:`ConfigError` with one line, prefixed by ``where`` (``env.rewards[0]``)."""
    at = f"{where}: " if where else ""
    try:
        factory = REWARDS.get(name)
    except ConfigError as e:
        raise ConfigError(f"{at}{e}") from None
    accepted, required = _options_of(factory)
    if accepted is not None:
        for key in options:
            if key not in accepted:
                raise ConfigError(
                    f"{at}unknown option '{key}' for reward '{name}'; valid options: {', '.join(accepted) or '(none)'}"
                )
    missing = [r for r in required if r not in options]
    if missing:
        raise ConfigError(f"{at}reward '{name}' needs option(s): {', '.join(missing)}")
    schema = _options_schema(factory)
    named = {f.name for f in dataclasses.fields(schema)}
    try:
        OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in options.items() if k in named})
    except OmegaConfBaseException as e:
        key = f"{where or name}.{getattr(e, 'key', None)}"
        raise ConfigError(f"bad value for '{key}': {str(e).splitlines()[0]}") from None


def check_reward_specs(specs: Any, where: str = "rewards") -> List[Tuple[str, str, float, Optional[float], Dict[str, Any]]]:
    """Check a list of reward specs (see :class:`RewardPipeline`) without building any reward,
    so a config can be refused at start-up, before a model loads. Returns per spec (component
    key, reward name, weight, its own failure score or None, factory options)."""
    if isinstance(specs, Mapping):
        specs = [specs]
    if not specs:
        raise ConfigError(f"{where}: at least one reward is needed")
    parsed: List[Tuple[str, str, float, Optional[float], Dict[str, Any]]] = []
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{at} must be a mapping with a 'name', got {spec!r}")
        spec = dict(spec)
        if "name" not in spec:
            raise ConfigError(f"{at}.name is missing; valid choices: {', '.join(REWARDS.names())}")
        name = str(spec["name"])
        weight = _number(spec.get("weight", 1.0), f"{at}.weight")
        fscore = None if spec.get("failure_score") is None else _number(spec["failure_score"], f"{at}.failure_score")
        key = str(spec.get("alias") or name)
        if any(p[0] == key for p in parsed):
            raise ConfigError(f"reward '{key}' appears twice in {where}; give one of them an 'alias'")
        options = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
        check_reward_options(name, options, at)
        parsed.append((key, name, weight, fscore, options))
    return parsed


def _number(value: Any, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be finite, got {value}")
    return value


def build_reward(name: str, **options: Any) -> RewardFn:
    """Build the reward registered as ``name`` with config ``options``.

    Unknown names, unknown options, missing required options, values of the wrong type
    (:func:`check_reward_options`) and factories that reject their values raise
    :class:`ConfigError` with one line.
    """
    check_reward_options(name, options)
    factory = REWARDS.get(name)
    try:
        fn = factory(**options)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"reward '{name}': {e}") from e
    if not callable(fn):
        raise TypeError(f"reward factory '{name}' returned {type(fn).__name__}, not a callable")
    return fn


def _column_filter(fn: Callable) -> Optional[set]:
    """Names of the columns ``fn`` accepts, or None when it takes **kwargs (all columns)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@dataclass
class RewardResult:
    """Rewards of one batch.

    ``scores``: weighted total per sample. ``components``: every reward's raw (unweighted)
    per-sample score under its name, and its sub-scores under ``<name>/<sub>``; a sample on
    which a reward failed holds that reward's ``failure_score`` in all of its components.
    ``failures``: per reward name, how many samples failed. ``weights``: per reward name.
    """

    scores: List[float]
    components: Dict[str, List[float]] = field(default_factory=dict)
    failures: Dict[str, int] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def num_failures(self) -> int:
        return sum(self.failures.values())

    def metrics(self, prefix: str = "reward") -> Dict[str, float]:
        """Means for logging: ``reward/total``, ``reward/<component>`` for every component,
        ``reward/failures`` (samples that failed, summed over rewards) and
        ``reward/failures/<name>`` per reward. Means are left out for an empty batch."""
        out: Dict[str, float] = {}
        if self.scores:
            out[f"{prefix}/total"] = sum(self.scores) / len(self.scores)
            for key, values in self.components.items():
                out[f"{prefix}/{key}"] = sum(values) / len(values)
        out[f"{prefix}/failures"] = float(self.num_failures)
        for key, count in self.failures.items():
            out[f"{prefix}/failures/{key}"] = float(count)
        return out


@dataclass
class _Entry:
    key: str  # component name: the alias, else the registered name
    name: str
    weight: float
    fn: RewardFn
    failure_score: float
    columns: Optional[set]


class _SampleFailure(Exception):
    pass


class RewardPipeline:
    """Weighted sum of rewards built from config specs: per sample (``__call__``: texts,
    images, videos as completions) or per frame of a video (:meth:`frame_rewards`, for learned
    rewards that an env puts back on the steps the frames came from, :mod:`workbench.rewards.video`).

    ``specs``: list of mappings ``{name, weight=1.0, alias=None, failure_score=None,
    **options}``. ``alias`` names the components (needed when one reward appears twice);
    ``failure_score`` overrides the pipeline's for that reward.

    Calling the pipeline with ``(completions, **columns)`` returns a :class:`RewardResult`.
    Each reward is first called on the whole batch; if that raises (or returns a wrong
    shape) it is called again sample by sample, and the samples that still raise get the
    failure score. Non-finite scores are failures too. Failures are counted per reward and
    logged as warnings; the batch always completes.
    """

    def __init__(self, specs: Sequence[Mapping[str, Any]], failure_score: float = 0.0) -> None:
        parsed = check_reward_specs(specs)
        if not math.isfinite(float(failure_score)):
            raise ConfigError(f"rewards failure_score must be finite, got {failure_score}")
        self.failure_score = float(failure_score)
        self.entries: List[_Entry] = []
        for key, name, weight, fscore, options in parsed:
            fn = build_reward(name, **options)
            fscore = self.failure_score if fscore is None else fscore
            self.entries.append(_Entry(key, name, weight, fn, fscore, _column_filter(fn)))

    @property
    def names(self) -> List[str]:
        return [e.key for e in self.entries]

    @property
    def weights(self) -> Dict[str, float]:
        return {e.key: e.weight for e in self.entries}

    def require_frame_rewards(self, where: str) -> None:
        """Refuse (one line naming ``where``) a pipeline with a reward that gives no per-frame
        rewards, before it is used on videos by :meth:`frame_rewards`."""
        for e in self.entries:
            if not callable(getattr(e.fn, "frame_rewards", None)):
                raise ConfigError(f"{where}: reward '{e.name}' gives no per-frame rewards (frame_rewards); "
                                  f"use a video reward such as rapl or rlhf_video")

    def frame_rewards(self, video: Any) -> Dict[str, Any]:
        """Every reward's per-frame rewards of one video ([n, H, W, 3] uint8): ``{component:
        float64 array [n]}``, unweighted (:attr:`weights` holds the weights). Raises when a
        reward fails or gives a wrong shape or a non-finite value; the caller decides what the
        video's steps get then (a failing episode must not stop a run)."""
        import numpy as np

        out = {}
        for e in self.entries:
            r = np.asarray(e.fn.frame_rewards(video), dtype=np.float64)
            if r.shape != (len(video),) or not np.all(np.isfinite(r)):
                raise ValueError(f"reward '{e.key}' frame_rewards gave shape {r.shape} (finite: {bool(np.all(np.isfinite(r)))}) "
                                 f"for {len(video)} frames")
            out[e.key] = r
        return out

    def __call__(self, completions: Sequence[Any], **columns: Any) -> RewardResult:
        n = len(completions)
        for col, values in columns.items():
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != n:
                got = type(values).__name__ if not hasattr(values, "__len__") or isinstance(values, (str, bytes)) else len(values)
                raise ValueError(f"reward column '{col}' must be a per-sample list of length {n}, got {got}")
        totals = [0.0] * n
        components: Dict[str, List[float]] = {}
        failures: Dict[str, int] = {}
        for entry in self.entries:
            cols = columns if entry.columns is None else {k: v for k, v in columns.items() if k in entry.columns}
            score, subs, failed = self._run(entry, list(completions), cols)
            components[entry.key] = score
            for sub, values in subs.items():
                components[f"{entry.key}/{sub}"] = values
            failures[entry.key] = failed
            for i in range(n):
                totals[i] += entry.weight * score[i]
        return RewardResult(totals, components, failures, self.weights)

    # -- one reward ---------------------------------------------------------------------

    def _run(self, entry: _Entry, completions: list, cols: Dict[str, Any]):
        n = len(completions)
        if n == 0:
            return [], {}, 0
        try:
            score, subs = self._normalize(entry.fn(completions, **cols), n)
        except Exception as e:  # noqa: BLE001 - any reward bug must not stop the run
            logger.debug("reward '%s' failed on the batch; retrying sample by sample", entry.key, exc_info=True)
            if n == 1:
                outcomes: List[Any] = [e]
            else:
                outcomes = [self._one(entry, completions, cols, i) for i in range(n)]
            score = [entry.failure_score] * n
            subs = {}
            for i, out in enumerate(outcomes):
                if isinstance(out, BaseException):
                    continue
                s, sub = out
                score[i] = s
                for k, v in sub.items():
                    subs.setdefault(k, [entry.failure_score] * n)[i] = v
            errors = {i: out for i, out in enumerate(outcomes) if isinstance(out, BaseException)}
        else:
            errors = {}
        # non-finite scores are failures; a failed sample gets failure_score in every component
        for i in range(n):
            if i not in errors and not (math.isfinite(score[i]) and all(math.isfinite(v[i]) for v in subs.values())):
                errors[i] = _SampleFailure(f"non-finite score {score[i]}")
        for i in errors:
            score[i] = entry.failure_score
            for v in subs.values():
                v[i] = entry.failure_score
        if errors:
            self._log(entry, errors, n)
        return score, subs, len(errors)

    def _one(self, entry: _Entry, completions: list, cols: Dict[str, Any], i: int):
        try:
            return self._normalize(entry.fn([completions[i]], **{k: [v[i]] for k, v in cols.items()}), 1, index=i)
        except Exception as e:  # noqa: BLE001
            return e

    @staticmethod
    def _normalize(out: Any, n: int, index: Optional[int] = None):
        """(score list, {sub: list}) from a reward's output; raises on a wrong shape.
        With ``index`` (a single-sample call) the values are unwrapped to floats."""

        def floats(values: Any, what: str) -> List[float]:
            if hasattr(values, "tolist"):  # numpy / torch
                values = values.tolist()
            if isinstance(values, (int, float)) and n == 1:
                values = [values]
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != n:
                size = len(values) if isinstance(values, Sequence) else type(values).__name__
                raise _SampleFailure(f"{what} must be a list of {n} floats, got {size}")
            return [float(v) if v is not None else math.nan for v in values]

        if isinstance(out, Mapping):
            if not out:
                raise _SampleFailure("reward returned an empty dict")
            subs = {str(k): floats(v, f"sub-score '{k}'") for k, v in out.items()}
            if "score" in subs:
                score = subs.pop("score")
            else:
                score = [sum(v[i] for v in subs.values()) / len(subs) for i in range(n)]
        else:
            score, subs = floats(out, "reward output"), {}
        if index is not None:
            return score[0], {k: v[0] for k, v in subs.items()}
        return score, subs

    @staticmethod
    def _log(entry: _Entry, errors: Dict[int, BaseException], n: int) -> None:
        shown = list(errors.items())[:_MAX_LOGGED_FAILURES]
        detail = "; ".join(f"sample {i}: {type(e).__name__}: {e}" for i, e in shown)
        more = f" (first {len(shown)} shown)" if len(errors) > len(shown) else ""
        logger.warning(
            "reward '%s' failed on %d of %d samples, scored %s%s: %s",
            entry.key, len(errors), n, entry.failure_score, more, detail,
        )
