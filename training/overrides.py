"""Nested config maps -> Hydra command-line overrides (used by sweeps and model selection)."""

from __future__ import annotations

from omegaconf import OmegaConf


def flatten_overrides(node, prefix: str = "") -> list[str]:
    """``{train: {epochs: 1}}`` -> ``["++train.epochs=1"]`` (``++``: set the key whether or not it exists)."""
    if node is None:
        return []
    node = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flatten_overrides(v, f"{key}.")
        elif v is None:
            out.append(f"++{key}=null")
        elif isinstance(v, bool):
            out.append(f"++{key}={str(v).lower()}")
        elif isinstance(v, list):
            out.append(f"++{key}=[{','.join(str(x) for x in v)}]")
        else:
            out.append(f"++{key}={v}")
    return out
