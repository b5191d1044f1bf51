"""Evaluator with reset / process / evaluate that works for any Predictor (detectron2's pattern)."""

from __future__ import annotations

from evaluation.metrics import EvalResult, compute_metrics
from training.backends.base import EVAL_CONF, Detections, Predictor
from training.data.schema import DetectionSplit


class DetectionEvaluator:
    """Accumulates predictions for the images of one split, then computes every metric once.

    Args:
        split: ground truth.
        conf_fixed: the fixed operating confidence reported beside the max-F1 one.
        n_bootstrap: bootstrap resamples for the 95% intervals (0 disables them).
        seed: bootstrap seed.
    """

    def __init__(self, split: DetectionSplit, conf_fixed: float, n_bootstrap: int, seed: int):
        self.split = split
        self.conf_fixed = conf_fixed
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._preds: dict[int, Detections] = {}

    def process(self, image_ids: list[int], detections: list[Detections]) -> None:
        for iid, det in zip(image_ids, detections, strict=True):
            self._preds[int(iid)] = det

    def evaluate(self) -> EvalResult:
        return compute_metrics(self.split, self._preds, self.conf_fixed, self.n_bootstrap, self.seed)


def predict_split(
    detector: Predictor,
    split: DetectionSplit,
    conf: float = EVAL_CONF,
    imgsz: int | None = None,
    batch: int = 8,
) -> dict[int, Detections]:
    """Run ``detector`` over every image of ``split``; image id -> Detections."""
    out: dict[int, Detections] = {}
    images = split.images
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        dets = detector.predict([im.file for im in chunk], conf=conf, imgsz=imgsz)
        out.update({im.id: d for im, d in zip(chunk, dets, strict=True)})
    return out


def evaluate_detector(
    detector: Predictor, split: DetectionSplit, eval_cfg
) -> tuple[EvalResult, dict[int, Detections]]:
    """Predict over ``split`` and compute the metrics; returns the result and the raw predictions.

    ``eval_cfg``: the ``evaluation`` group (conf/evaluation/default.yaml; its keys are read, none is assumed).
    """
    preds = predict_split(
        detector, split, float(eval_cfg["conf_min"]), eval_cfg["imgsz"], int(eval_cfg["batch"])
    )
    conf_fixed, n_bootstrap, seed = eval_cfg["conf_fixed"], eval_cfg["n_bootstrap"], eval_cfg["seed"]
    return compute_metrics(split, preds, float(conf_fixed), int(n_bootstrap), int(seed)), preds
