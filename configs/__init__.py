"""Packaged YAML configs (algo/, env/, policy/, experiment/), composed with Hydra."""
