"""Backends: one module per library behind the Detector contract.

Adding a library = one module + one entry in ``BACKENDS``; the contract tests pick it up.
"""

from __future__ import annotations

import importlib

from training.backends.base import Detections, Detector
from training.errors import ConfigError

# backend name (the model config's ``backend:``) -> "module:Class", imported lazily so that one library's
# absence does not break the others.
BACKENDS: dict[str, str] = {
    "ultralytics": "training.backends.ultralytics:UltralyticsDetector",
    "transformers": "training.backends.transformers:TransformersDetector",
}


def get_backend(name: str) -> type[Detector]:
    """Detector class registered under ``name``; an unknown name fails listing the valid ones."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; valid backends: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_detector(model_cfg, run_dir, tracker=None, validator=None) -> Detector:
    """Detector for ``model_cfg.backend``; ``validator(detector, split) -> metrics`` is the shared evaluator."""
    det = get_backend(str(model_cfg.get("backend")))(model_cfg, run_dir, tracker)
    det.validator = validator
    return det


__all__ = ["BACKENDS", "Detections", "Detector", "build_detector", "get_backend"]
