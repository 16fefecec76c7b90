"""Reward library: per-sample scores with named components, composed by weights.

Importing this package registers the rewards in :data:`workbench.registry.REWARDS`:
``math_accuracy``, ``think_answer_format``, ``regex_match``, ``semantic_similarity``,
``code_tests``, ``countdown``, ``jpeg_compressibility``, ``jpeg_incompressibility``,
``aesthetic_score`` (an MLP head over image embeddings, LAION aesthetic predictor style),
``vlm_judge`` (rubric scores from a VLM behind an OpenAI-compatible endpoint), ``rapl`` (RAPL's
OT visual reward over an aligned frame encoder) and ``rlhf_video`` (its RLHF baseline). Heavy
dependencies (math-verify, the embedding and image models, the sandbox) are imported when a
reward is built or first called. See :mod:`workbench.rewards.base`.
"""
from workbench.rewards import aesthetic, code, countdown, format, image, math, rapl, semantic, vlm_judge  # noqa: F401  (register)
from workbench.rewards import gui  # noqa: F401  (register: gui_click, gui_action_type, gui_g1, btl_ui, gui_region_consistency)
from workbench.rewards.base import RewardPipeline, RewardResult, build_reward, completion_text

__all__ = ["RewardPipeline", "RewardResult", "build_reward", "completion_text"]
