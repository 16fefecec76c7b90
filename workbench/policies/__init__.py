"""Policies of the engine; importing this package registers them."""
from workbench.policies import causal_lm, diffusion, flow, gaussian_mlp, visuomotor  # noqa: F401
from workbench.policies.base import Policy  # noqa: F401
