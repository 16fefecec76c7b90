"""RAPL: a visual reward learned from few preferences (Tian et al., arXiv 2310.07932, 2412.04835).

Representation-Aligned Preference-based Learning spends the preference budget on aligning a
vision encoder, not on learning a reward: the encoder is fine-tuned so that optimal-transport
similarities between videos agree with ranked triplets, and the reward of a robot video is then
OT feature matching against preferred demonstrations. The pieces, independent of any env:

- :mod:`.encoder`: :class:`FrameEncoder` (timm backbone or tiny CNN + projection head);
- :mod:`.transport`: cosine cost, Sinkhorn plan, OT similarity and per-frame rewards;
- :mod:`.preferences`: rollouts, the simulated-human :class:`PreferenceOracle`, triplets, pairs;
- :mod:`.train`: Bradley–Terry alignment of the encoder and the RLHF baseline's training, and
  the pipelines from ranked triplets to a reward (:func:`train_rapl_reward`,
  :func:`train_rlhf_reward`);
- :mod:`.reward`: :class:`RAPLReward`, :class:`RLHFRewardModel`, checkpoints, Spearman.

Importing this package only registers the ``rapl`` and ``rlhf_video`` rewards; torch, timm
and POT load when a name below is first used or a reward is built.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional

from workbench.registry import REWARDS

_API = {
    "FrameEncoder": "encoder", "TinyCNN": "encoder", "video_to_tensor": "encoder",
    "DEFAULT_REG": "transport", "cosine_cost": "transport", "transport_plan": "transport",
    "ot_similarity": "transport", "ot_similarities": "transport", "ot_frame_rewards": "transport",
    "Rollout": "preferences", "Triplet": "preferences", "Pair": "preferences",
    "PreferenceOracle": "preferences", "sample_triplets": "preferences", "split_triplets": "preferences",
    "pairs_from_triplets": "preferences",
    "triplet_logits": "train", "triplet_accuracy": "train", "train_alignment": "train",
    "pair_logits": "train", "pair_accuracy": "train", "train_rlhf": "train", "PAIRS_PER_TRIPLET": "train",
    "epochs_for_updates": "train", "train_rapl_reward": "train", "train_rlhf_reward": "train",
    "RAPLReward": "reward", "RLHFRewardModel": "reward", "VideoRewardFn": "reward",
    "load_reward": "reward", "spearman_with_oracle": "reward",
}
__all__ = sorted(_API) + ["rapl", "rlhf_video"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@REWARDS.register("rapl")
def rapl(checkpoint: str, device: str = "cpu", reg: Optional[float] = None):
    """RAPL's OT visual reward from a checkpoint written by ``RAPLReward.save``: one score per
    video (``T * max_k s(video, demo_k)``); ``fn.frame_rewards(video)`` gives the ``[T]`` per-step
    rewards an env adapter puts on the steps. ``reg`` overrides the saved Sinkhorn weight."""
    from workbench.rewards.rapl.reward import RAPLReward, VideoRewardFn

    model = RAPLReward.load(checkpoint, device=device)
    if reg is not None:
        if not float(reg) > 0:
            raise ValueError(f"reg must be > 0, got {reg}")
        model.reg = float(reg)
    return VideoRewardFn(model)


@REWARDS.register("rlhf_video")
def rlhf_video(checkpoint: str, device: str = "cpu"):
    """The RLHF baseline's learned per-frame video reward from a checkpoint written by
    ``RLHFRewardModel.save``: one score (summed frame rewards) per video."""
    from workbench.rewards.rapl.reward import RLHFRewardModel, VideoRewardFn

    return VideoRewardFn(RLHFRewardModel.load(checkpoint, device=device))
