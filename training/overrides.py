"""Config maps: nested maps -> Hydra command-line overrides (sweeps, model selection), and mappings -> the
keyword arguments of a frozen settings dataclass (the generators' and the recipe's ``from_cfg``)."""

from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf

from training.cli import ConfigError


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


def _tuples(v):
    if isinstance(v, str | bytes) or not hasattr(v, "__len__"):
        return v
    return tuple(_tuples(x) for x in v)


def settings_kwargs(cls, cfg, where: str) -> dict:
    """A mapping (a Hydra node) as keyword arguments of the dataclass ``cls``: unknown keys, and fields without a
    default left unset, fail naming them; sequences (nested too) become tuples so the frozen dataclass stays
    hashable."""
    raw = dict(cfg or {})
    valid = sorted(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown settings {unknown}; valid: {valid}")
    fields = dataclasses.fields(cls)
    missing = [
        f.name for f in fields if f.name not in raw and f.default is f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing {missing} (every setting without a default must be set)")
    return {k: _tuples(v) for k, v in raw.items()}
