"""Workbench: one policy-gradient engine for tokens, denoising steps and control actions."""

__version__ = "0.1.0"
