"""``python -m evaluation checkpoint=... [data=...] [evaluation.splits=[test]]``: evaluate a checkpoint."""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

from evaluation.run import check_evaluation_config, evaluate_run, load_model
from training.cli import UserError, cli, require
from training.inference.exported import ExportedModel
from training.runfiles import refuse_held_run
from training.tracking import tracked
from training.train import run_dir_of, save_config


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """Load ``cfg.checkpoint`` with ``cfg.backend`` and evaluate it; artefacts go to the run dir."""
    require(cfg, "checkpoint", usage="a weights/best.pt or weights/best folder of a run")
    check_evaluation_config(cfg)
    from evaluation.predict import resolve_checkpoint

    with open_dict(cfg):  # a run folder stands for its weights/best.pt (or weights/best), as for predict
        cfg.checkpoint = str(resolve_checkpoint(cfg.checkpoint))
    run_dir = run_dir_of(cfg)
    if (run_dir / "metrics.json").exists():
        raise UserError(f"{run_dir} already holds results (metrics.json); choose another hydra.run.dir")
    refuse_held_run(run_dir)  # a training run, an export, an audit, a predict run
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    with tracked(cfg.get("logger"), run_dir, cfg) as tracker:
        detector = load_model(
            cfg.checkpoint, cfg.backend, cfg.evaluation.decode, cfg.get("precision"), run_dir
        )
        if isinstance(detector, ExportedModel):
            with open_dict(cfg):
                cfg.evaluation.imgsz = detector.imgsz  # an export has one input size: evaluate at it
        return evaluate_run(detector, cfg, run_dir, tracker)


@cli("evaluate")
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
