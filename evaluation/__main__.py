"""``python -m evaluation checkpoint=... [data=...] [evaluation.splits=[test]]``: evaluate a checkpoint."""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

from evaluation.run import evaluate_run
from training.backends import get_backend
from training.errors import UserError, cli, require
from training.tracking import tracked
from training.train import run_dir_of, save_config


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """Load ``cfg.checkpoint`` with ``cfg.backend`` and evaluate it; artefacts go to the run dir."""
    require(cfg, "checkpoint", usage="a weights/best.pt or weights/best folder of a run")
    run_dir = run_dir_of(cfg)
    if (run_dir / "metrics.json").exists():
        raise UserError(f"{run_dir} already holds results (metrics.json); choose another hydra.run.dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    with tracked(cfg.get("logger"), run_dir, cfg) as tracker:
        detector = load_any(cfg, run_dir, tracker)
        return evaluate_run(detector, cfg, run_dir, tracker)


def load_any(cfg: DictConfig, run_dir, tracker=None):
    """A checkpoint through its backend, or an exported model (.onnx / .xml / .engine written by
    ``python -m export``) through its runtime with the family's shared pre/post-processing."""
    from export.model import is_exported, load_exported

    if is_exported(str(cfg.checkpoint)):
        model = load_exported(str(cfg.checkpoint), cfg.get("precision"))
        if not model.family.is_detector:
            raise UserError(
                f"{cfg.checkpoint}: a classifier export; evaluate it with python -m export (parity)"
            )
        with open_dict(cfg):
            # an export has one input size: evaluate at it
            cfg.evaluation.imgsz = model.imgsz
        return model
    backend = get_backend(str(cfg.backend))
    return backend.from_checkpoint(str(cfg.checkpoint), cfg.evaluation.decode[backend.name], run_dir=run_dir)


@cli("evaluate")
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
