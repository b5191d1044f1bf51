"""Backends: one module per library behind the :class:`Backend` contract (training, inference, export).

Adding a library = one module + one entry in ``BACKENDS``; the contract tests pick it up.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from training.backends.base import Backend, Detections, Detector, ExportSpec, Trainer
from training.cli import ConfigError, UserError

# backend name (the model config's ``backend:``, an export's ``kind``) -> "module:Class", imported lazily so that
# one library's absence does not break the others. Order matters for :func:`backend_of`: the first that owns a
# checkpoint takes it (ultralytics first: it refuses a .pt naming anything but model classes and plain data).
BACKENDS: dict[str, str] = {
    "ultralytics": "training.backends.ultralytics:UltralyticsDetector",
    "transformers": "training.backends.transformers:TransformersDetector",
    "classifier": "training.classifier.backend:ClassifierBackend",
}


def get_backend(name: str) -> type[Backend]:
    """Backend class registered under ``name``; an unknown name fails listing the valid ones."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; valid backends: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_detector(model_cfg, run_dir, tracker=None, validator=None) -> Backend:
    """Backend for ``model_cfg.backend``; ``validator`` is the shared evaluator's per-epoch metric function."""
    det = get_backend(str(model_cfg.get("backend")))(model_cfg, run_dir, tracker)
    det.validator = validator
    return det


def backend_of(checkpoint: str | Path) -> str:
    """Name of the backend a checkpoint belongs to, decided without executing anything in it."""
    p = Path(checkpoint)
    if not p.exists():
        raise UserError(f"{p}: checkpoint not found")
    for name in BACKENDS:
        if get_backend(name).owns(p):
            return name
    raise UserError(
        f"{p}: not a checkpoint of any backend {list(BACKENDS)} (plain tensors/data of another model)"
    )


__all__ = [
    "BACKENDS",
    "Backend",
    "Detections",
    "Detector",
    "ExportSpec",
    "Trainer",
    "backend_of",
    "build_detector",
    "get_backend",
]
