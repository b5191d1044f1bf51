"""Scan effects (blur, noise, JPEG, contrast, binarisation, aspect jitter) as albumentations transforms.

Ultralytics runs albumentations itself, after mosaic and its affine step, when its ``augmentations`` train
argument holds a list of transforms (boxes follow spatial ones). The list comes from the recipe YAML, one entry
per transform: ``{name: GaussianBlur, blur_limit: [3, 5], p: 0.1}``; compositions nest with ``transforms:``.
Names are looked up in the ``albumentations`` namespace only and must be transform classes: a config can never
name an arbitrary callable (unlike a Hydra ``_target_``), so a recipe file from someone else runs no code.
"""

from __future__ import annotations

from training.cli import ConfigError


def _transform_classes():
    import albumentations as A

    return A, (A.BasicTransform, A.BaseCompose)


def build_transform(entry, where: str = "recipe.scan"):
    """One albumentations transform from a mapping ``{name: ..., **kwargs}`` (``transforms`` for compositions)."""
    A, bases = _transform_classes()
    raw = dict(entry or {})
    name = raw.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{where}: each transform needs a name (an albumentations class), got {entry!r}")
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, bases)):
        raise ConfigError(f"{where}: {name!r} is not an albumentations transform")
    nested = raw.pop("transforms", None)
    raw = {k: _plain(v) for k, v in raw.items()}
    if nested is not None:
        if not issubclass(cls, A.BaseCompose):
            raise ConfigError(f"{where}: {name} is not a composition, it takes no transforms")
        raw["transforms"] = [build_transform(t, f"{where}.{name}") for t in nested]
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            transform = cls(**raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {name}({raw}): {str(e).strip().splitlines()[0][:200]}") from None
    for w in caught:  # albumentations only warns about a misspelt argument, which would then do nothing
        if "not valid" in str(w.message):
            raise ConfigError(f"{where}: {w.message}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return transform


def _plain(v):
    """OmegaConf containers -> Python (albumentations validates with pydantic and wants tuples for ranges)."""
    if isinstance(v, dict) or hasattr(v, "items"):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple) or (hasattr(v, "__len__") and not isinstance(v, str | bytes)):
        return tuple(_plain(x) for x in v)
    return v


def build_scan_effects(entries) -> list:
    """The recipe's ``scan`` list as albumentations transforms (ultralytics' ``augmentations`` argument)."""
    if entries is None:
        return []
    return [build_transform(e, f"recipe.scan[{i}]") for i, e in enumerate(entries)]
