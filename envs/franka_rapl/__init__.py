"""RAPL research benchmarks on Franka Push with a forbidden zone; importing this package
registers ``workbench bench rapl-franka`` and ``workbench bench rapl-align``.

They live beside the env, not in the engine, because everything in them is about one task:
scripted pushing controllers (:mod:`.scripted`), a simulated human who wants the cube kept out
of the red zone (:mod:`.oracle`), pools of scripted videos (:mod:`.pool`), a simulator-labelled
stand-in for a pre-trained encoder (:mod:`.pretrain`), the reward-quality benchmark
(:mod:`.quality_bench`, figures in :mod:`.plots`) and the policy-alignment benchmark
(:mod:`.alignment_bench`). The reward and its training from preferences are engine library,
:mod:`workbench.rewards.rapl`.
"""
from envs.franka_rapl import alignment_bench, quality_bench  # noqa: F401  (register the benchmarks)
