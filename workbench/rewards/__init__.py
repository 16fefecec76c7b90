"""Reward library: per-sample scores with named components, composed by weights.

Importing this package registers the rewards in :data:`workbench.registry.REWARDS`:
``math_accuracy``, ``think_answer_format``, ``regex_match``, ``semantic_similarity``,
``code_tests``, ``countdown``, ``jpeg_compressibility`` and ``jpeg_incompressibility``. Heavy dependencies (math-verify, the embedding model, the sandbox) are
imported when a reward is built or first called. See :mod:`workbench.rewards.base`.
"""
from workbench.rewards import code, countdown, format, image, math, semantic  # noqa: F401  (register)
from workbench.rewards.base import RewardPipeline, RewardResult, build_reward, completion_text

__all__ = ["RewardPipeline", "RewardResult", "build_reward", "completion_text"]
