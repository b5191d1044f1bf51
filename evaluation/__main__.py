"""``python -m evaluation checkpoint=... [data=...] [evaluation.splits=[test]]``: evaluate a checkpoint."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

import training  # noqa: F401  (registers the ${asset:} resolver before Hydra composes)
from evaluation.run import evaluate_run
from training.backends import get_backend
from training.errors import UserError, exit_on_user_error
from training.tracking import tracked
from training.train import run_dir_of, save_config


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """Load ``cfg.checkpoint`` with ``cfg.backend`` and evaluate it; artefacts go to the run dir."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise UserError("checkpoint=PATH is required (a weights/best.pt or weights/best folder of a run)")
    run_dir = run_dir_of(cfg)
    if (run_dir / "metrics.json").exists():
        raise UserError(f"{run_dir} already holds results (metrics.json); choose another hydra.run.dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    with tracked(cfg.get("logger"), run_dir, cfg) as tracker:
        model_cfg = OmegaConf.create({"backend": cfg.backend, "name": cfg.model.name})
        detector = get_backend(str(cfg.backend))(model_cfg, run_dir, tracker)
        detector.load(str(cfg.checkpoint))
        return evaluate_run(detector, cfg, run_dir, tracker)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
