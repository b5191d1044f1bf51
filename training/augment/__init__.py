"""Training recipes for documents (conf/recipe/*.yaml): copy-paste of real signature crops and scan effects.

A recipe is config only (every number in YAML). For the ultralytics detectors it plugs into ultralytics' own
hooks, never a fork of its trainer: scan effects are its ``augmentations`` argument (albumentations, run by
ultralytics with box handling), copy-paste wraps the training dataset's ``get_image_and_label`` (see
:mod:`training.augment.copy_paste`), and geometric jitter is ultralytics' own ``degrees`` / ``shear`` / ``scale``
set by the recipe file under ``train``.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.augment.copy_paste import CropBank, PasteConfig, install, paste_crops
from training.augment.scan import build_scan_effects
from training.cli import ConfigError

__all__ = ["Recipe", "CropBank", "PasteConfig", "paste_crops", "build_scan_effects"]


@dataclass(frozen=True)
class Recipe:
    name: str = "none"
    copy_paste: PasteConfig | None = None
    scan: tuple = ()  # albumentations transform entries, built lazily (albumentations is imported only then)

    @classmethod
    def from_cfg(cls, cfg) -> Recipe:
        from omegaconf import OmegaConf

        # the recipe: node (its schema, training/config.py, rejects unknown keys) or a plain mapping
        raw = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
        scan = raw.get("scan")
        if scan is not None and not isinstance(scan, list | tuple) and not hasattr(scan, "__len__"):
            raise ConfigError(
                "recipe.scan: a list of albumentations transforms, e.g. [{name: GaussianBlur, p: 0.1}]"
            )
        recipe = cls(
            name=str(raw.get("name", "none")),
            copy_paste=PasteConfig.from_cfg(raw["copy_paste"]) if raw.get("copy_paste") else None,
            scan=tuple(scan or ()),
        )
        recipe.augmentations()  # fail now, before a dataset is loaded, on a misspelt transform
        return recipe

    @property
    def active(self) -> bool:
        return self.copy_paste is not None or bool(self.scan)

    def augmentations(self) -> list | None:
        """ultralytics' ``augmentations`` argument; None keeps ultralytics' own default albumentations."""
        return build_scan_effects(list(self.scan)) if self.scan else None

    def paster(self, train_split, max_pixels: int | None = None):
        """A function hooking copy-paste into an ultralytics training dataset, or None without copy-paste.
        The crops come from ``train_split`` only (never valid or test)."""
        if self.copy_paste is None or self.copy_paste.p <= 0:
            return None
        bank, cfg = CropBank.from_split(train_split, max_pixels), self.copy_paste

        def hook(dataset) -> None:
            install(dataset, bank, cfg)

        hook.bank = bank
        return hook
