"""Collection: one collector per acting contract, and the token generation backends.

- ``tokens``: groups of completions from a ``TokenGenerator`` (and DAPO's dynamic-sampling rounds);
- ``control``: fixed-length rollouts of a ``ControlActor`` on a gymnasium vector env, and the
  one evaluation-episode loop;
- ``denoising``: images and their denoising chains from a ``DenoisingSampler``;
- backends of token generation: ``hf`` (transformers ``generate``, CPU or GPU) and ``vllm`` (GPU,
  lazily imported), both returning a ``TokenRollout`` (``base``).

A collector is where a worker boundary (Ray actors, asynchronous rollouts, agent loops) attaches.
"""
from workbench.rollout.base import SamplingConfig, TokenRollout  # noqa: F401
