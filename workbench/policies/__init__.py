"""Policies of the engine, grouped by acting contract (``base``); importing this package registers them."""
from workbench.policies import causal_lm, diffusion, flow, gaussian_mlp, visuomotor, vlm  # noqa: F401
from workbench.policies.base import ControlActor, DenoisingSampler, Policy, TokenGenerator  # noqa: F401
