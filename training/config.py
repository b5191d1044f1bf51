"""Structured configs: the key sets and types of config groups, registered in Hydra's ConfigStore.

The values live in ``conf/`` and nowhere else: every field here is ``MISSING`` and the group's YAML file sets it
(its ``defaults:`` list names the schema first). The schema makes Hydra refuse a key the group does not have,
from an experiment file as from the command line, and check types, so Python reads ``cfg.evaluation.conf_fixed``
without a fallback number of its own.

Groups covered so far: ``evaluation`` (detectors and the region classifier) and ``trainer`` for the region
classifier. The others still rely on Hydra's struct mode for overrides and on the hand-written checks next to their
readers (``training/backends/ultralytics.py`` checks ``train.*`` against ultralytics' own argument list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class DetectionEvaluation:
    """``conf/evaluation/default.yaml`` (evaluation/evaluator.py, evaluation/run.py)."""

    splits: list[str] = MISSING
    conf_fixed: float = MISSING
    conf_min: float = MISSING
    imgsz: Any = MISSING  # ${train.imgsz}, or null: each model at its own training size
    batch: int = MISSING
    n_bootstrap: int = MISSING
    seed: int = MISSING
    ultralytics_metrics: bool = MISSING
    n_log_images: int = MISSING
    n_page_figures: int = MISSING


@dataclass
class ClassifierEvaluation:
    """``conf/evaluation/classifier.yaml`` (evaluation/classification.py)."""

    splits: list[str] = MISSING
    n_bootstrap: int = MISSING
    seed: int = MISSING
    save_misclassified: int = MISSING
    n_pages: int = MISSING


@dataclass
class Phase:
    epochs: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass
class ClassifierAugment:
    copies: int = MISSING  # offline augmented copies of each original training crop
    rotation: float = MISSING
    scale: list[float] = MISSING
    translate: float = MISSING
    brightness: float = MISSING
    contrast: float = MISSING
    saturation: float = MISSING
    hue: float = MISSING
    blur_p: float = MISSING
    blur_sigma: list[float] = MISSING


@dataclass
class Mining:
    rounds: int = MISSING
    k: int = MISSING
    epochs: int = MISSING
    lr: float = MISSING


@dataclass
class ClassifierTrainer:
    """``conf/trainer/classifier.yaml`` (training/classifier/trainer.py), mounted at ``train:``."""

    batch: int = MISSING
    workers: int = MISSING
    device: Any = MISSING  # auto | cpu | cuda | cuda:N | N
    stage1: Phase = MISSING
    stage2: Phase = MISSING
    patience: int = MISSING
    monitor: str = MISSING
    max_steps: Optional[int] = MISSING  # noqa: UP045 (OmegaConf reads the annotation at run time)
    augment: ClassifierAugment = MISSING
    mining: Mining = MISSING


SCHEMAS = {
    ("evaluation", "schema_default"): DetectionEvaluation,
    ("evaluation", "schema_classifier"): ClassifierEvaluation,
    ("trainer", "schema_classifier"): ClassifierTrainer,
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent; ``import training`` does it)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)
