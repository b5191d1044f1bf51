"""The region classifier (signature / stamp / thumb over colour-region crops) as a registered backend
(``model.backend: classifier``): trained by :func:`training.classifier.trainer.train_classifier`, exported
through the same :class:`~training.backends.base.ExportSpec` contract as the detectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.backends.base import EVAL_CONF, Backend, ExportSpec, Trainer


class ClassifierTrainer(Trainer):
    """The whole pipeline (stages, mining) of :func:`training.classifier.trainer.train_classifier`; the backend's
    ``run`` keeps the crops and pages for the evaluation."""

    def train(self, cfg) -> dict[str, float]:
        from training.classifier.trainer import train_classifier

        det = self.det
        det.run = train_classifier(cfg, det.run_dir, det.tracker, det.validator)
        det.model = det.run.model
        det.class_names = list(det.model.classes)
        det._checkpoint = det.run_dir / "weights" / "best.pt"
        return dict(det.run.metrics)


class ClassifierBackend(Backend):
    """Not a detector: :meth:`predict_proba` gives class probabilities of crops, and ``postprocess`` too."""

    name = "classifier"
    is_detector = False
    trainer = ClassifierTrainer

    def __init__(self, model_cfg, run_dir, tracker=None):
        super().__init__(model_cfg, run_dir, tracker)
        self.run = None  # the ClassifierRun of training (ClassifierTrainer): what the evaluation needs beyond the model

    @classmethod
    def owns(cls, path: Path) -> bool:
        from training.checkpoints import load_weights
        from training.classifier.model import is_classifier_checkpoint

        return path.is_file() and is_classifier_checkpoint(load_weights(path))

    def load(self, checkpoint, device: str | None = None) -> None:
        from training.classifier.model import load_classifier

        self.model = load_classifier(checkpoint).to(device or "cpu").eval()
        self.class_names = list(self.model.classes)
        self._checkpoint = Path(checkpoint)

    def predict_proba(self, crops: list) -> np.ndarray:
        """Class probabilities of RGB crops (PIL images or ``HxWx3`` uint8 arrays), ``(len(crops), n_classes)``."""
        return self._require().predict_proba(crops)

    def benchmark_forward(self, imgsz: int | None = None):
        import torch

        model = self._require().eval()
        size = int(imgsz or model.imgsz)
        return self._timed(model, torch.zeros(1, 3, size, size, device=model.device))

    def export_spec(self, imgsz: int | None = None, dynamic: bool = False) -> ExportSpec:
        clf = self._require().cpu().eval()
        return ExportSpec(
            self.name,
            int(imgsz or clf.imgsz),
            list(clf.classes),
            ["input"],
            ["logits"],
            {"normalize": clf.normalize},
            clf,
            str(self._checkpoint or ""),
        )

    @staticmethod
    def preprocess(image, imgsz: int, options: dict):
        from training.classifier.model import preprocess

        return {"input": preprocess([image], imgsz, options["normalize"]).numpy()}, ()

    @staticmethod
    def in_graph_preprocessing(options: dict) -> dict:
        from training.classifier.model import IMAGENET_MEAN, IMAGENET_STD

        if options["normalize"] == "imagenet":  # (x / 255 - mean) / std == (x - 255 mean) / (255 std)
            return {"mean": [255.0 * m for m in IMAGENET_MEAN], "scale": [255.0 * s for s in IMAGENET_STD]}
        return {"mean": [0.0, 0.0, 0.0], "scale": [255.0, 255.0, 255.0]}

    @staticmethod
    def preprocess_u8(image, imgsz: int, options: dict):
        from training.classifier.model import resized

        return {"input": np.asarray(resized(image, imgsz))[None]}, ()

    @staticmethod
    def postprocess(outputs, ctx, imgsz: int, options: dict, conf: float = EVAL_CONF) -> np.ndarray:
        """Softmax of the logits, ``(batch, n_classes)``."""
        logits = np.asarray(outputs[0], dtype=np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
