"""The Detector contract every backend implements, and the Detections it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Detections:
    """Detections of one image in its original pixel frame.

    ``boxes`` is ``(N, 4)`` absolute ``xyxy``; ``labels`` are class indices into the model's class names
    (the dataset's categories sorted by id).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError("boxes, scores and labels differ in length")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def above(self, conf: float) -> Detections:
        keep = self.scores >= conf
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])


ImageInput = str | Path | np.ndarray


class Detector(ABC):
    """What the trainer, evaluator and exporter rely on. One subclass per library.

    Args:
        model_cfg: the ``model:`` config group (``backend``, ``name``, weights / architecture, ...).
        run_dir: where this run writes weights and artefacts.
        tracker: experiment tracker (``training.tracking``) for per-epoch logs.

    ``validator`` (set by ``build_detector``) is ``(detector, split) -> metrics``: the shared evaluator, injected
    so that backends with their own loop validate with the same metric definitions without importing
    ``evaluation``.
    """

    def __init__(self, model_cfg, run_dir: str | Path, tracker=None):
        self.model_cfg = model_cfg
        self.run_dir = Path(run_dir)
        self.tracker = tracker
        self.class_names: list[str] = []
        self.validator = None

    @abstractmethod
    def train(self, cfg) -> dict[str, float]:
        """Train on ``cfg.data`` with ``cfg.train``; return final training-side metrics (namespaced keys)."""

    @abstractmethod
    def predict(
        self, images: list[ImageInput], conf: float = 0.001, imgsz: int | None = None
    ) -> list[Detections]:
        """Predict on file paths or RGB ``HxWx3`` uint8 arrays; boxes in each image's original frame."""

    @abstractmethod
    def export(self, fmt: str, out_dir: str | Path) -> Path:
        """Export the loaded model to ``fmt`` under ``out_dir``; return the artefact path."""

    @abstractmethod
    def load(self, checkpoint: str | Path) -> None:
        """Load weights from a checkpoint written by ``train``."""

    @property
    @abstractmethod
    def checkpoint(self) -> Path | None:
        """Best checkpoint of the last training run (or the loaded one)."""

    @abstractmethod
    def num_parameters(self) -> int:
        """Parameter count of the loaded model."""

    @abstractmethod
    def benchmark_forward(self, imgsz: int | None = None):
        """Zero-argument callable running the loaded model alone on one preprocessed image (for latency)."""
