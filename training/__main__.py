"""``python -m training experiment=...``: train, then evaluate with the shared evaluator."""

from __future__ import annotations

from omegaconf import DictConfig

from training.backends import get_backend
from training.cli import cli
from training.train import train


def train_and_evaluate(cfg: DictConfig) -> dict[str, float]:
    """Train ``cfg``'s model and evaluate it with the evaluator that suits it (the command's work, also
    ``sigdet.train``); all metrics."""
    if not get_backend(str(cfg.model.get("backend"))).is_detector:
        from evaluation.classification import evaluate_classifier_run, validation_metrics

        return train(cfg, evaluate=evaluate_classifier_run, validate=validation_metrics)
    from evaluation.run import check_evaluation_config, evaluate_run, validator

    check_evaluation_config(cfg)
    return train(cfg, evaluate=evaluate_run, validate=validator(cfg.evaluation))


@cli("train")
def main(cfg: DictConfig) -> float | None:
    metrics = train_and_evaluate(cfg)
    value = metrics.get(str(cfg.get("optimized_metric")))
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
