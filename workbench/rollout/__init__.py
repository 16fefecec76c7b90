"""Rollout backends for token policies: ``hf`` (transformers ``generate``, CPU or GPU) and
``vllm`` (GPU, lazily imported). Both return a ``TokenRollout``."""
from workbench.rollout.base import SamplingConfig, TokenRollout  # noqa: F401
