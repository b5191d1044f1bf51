"""``python -m training experiment=...``: train, then evaluate with the shared evaluator."""

from __future__ import annotations

from omegaconf import DictConfig

from training.backends import get_backend
from training.errors import cli
from training.train import train


@cli("train")
def main(cfg: DictConfig) -> float | None:
    if not get_backend(str(cfg.model.get("backend"))).is_detector:
        from evaluation.classification import evaluate_classifier_run, validation_metrics

        metrics = train(cfg, evaluate=evaluate_classifier_run, validate=validation_metrics)
    else:
        from evaluation.run import evaluate_run, validator

        metrics = train(cfg, evaluate=evaluate_run, validate=validator(cfg.evaluation))
    value = metrics.get(str(cfg.get("optimized_metric")))
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
