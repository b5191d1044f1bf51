"""``train(cfg)``: the pure function behind ``python -m training``."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from training.backends import build_detector
from training.cli import ConfigError, UserError, check_device
from training.loops import launcher_rank
from training.tracking import redact, tracked

log = logging.getLogger(__name__)

# (backend, cfg, run_dir, tracker, training metrics) -> all metrics; the entry point injects the evaluator so
# that this package does not import `evaluation` (docs/architecture.md: evaluation imports training, not the reverse).
EvaluateFn = Callable[..., dict[str, float]]


def run_dir_of(cfg: DictConfig) -> Path:
    """``cfg.paths.run_dir`` when set (API use, sweep trials), else Hydra's run dir."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.paths.get("run_dir"):
        return Path(cfg.paths.run_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise UserError("no run dir: run through `python -m training` or set paths.run_dir")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_seed(seed) -> int:
    """``seed=`` as a whole number, else one line (``int("abc")`` deep in training was a traceback)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: expected a whole number")
    return seed


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a run dir that holds a finished run, or an interrupted one without ``resume=true``.

    Also Hydra's guard (conf/train.yaml ``hydra.callbacks.run_files.guard``): a refused dir gets no ``.hydra/``
    files and no job log lines either.

    Raises:
        UserError: the run dir must not be touched.
    """
    if (run_dir / "metrics.json").exists():
        raise UserError(
            f"{run_dir} already holds a finished run (metrics.json); choose another hydra.run.dir"
        )
    if (run_dir / "weights").exists() and not bool(cfg.resume):
        raise UserError(
            f"{run_dir} holds an interrupted run (weights/); add resume=true to continue it, or choose another hydra.run.dir"
        )
    from training.runfiles import refuse_held_run

    refuse_held_run(run_dir, resumable=("weights",))  # an export, an audit, a predict run


def save_config(cfg: DictConfig, run_dir: Path) -> Path:
    """The resolved config, secrets masked, as ``config.yaml`` in the run dir.

    Resolved, so an ``${oc.env:...}`` holding a URL with a password is masked by :func:`redact` here too.
    """
    path = run_dir / "config.yaml"
    container = redact(OmegaConf.to_container(cfg, resolve=True))
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(container)), encoding="utf-8")
    return path


def train(
    cfg: DictConfig, evaluate: EvaluateFn | None = None, validate=None, wrap_tracker=None
) -> dict[str, float]:
    """Train the configured backend on the configured data, then evaluate it (when ``evaluate`` is given).

    The entry point injects the evaluator and the per-epoch ``validate`` that suit the backend (detectors:
    ``validate(detector, split) -> metrics``; the region classifier: ``validate(y_true, y_pred, classes)``);
    ``validate`` is used for periodic validation by backends with their own loop;
    ``wrap_tracker(tracker) -> tracker`` lets a caller observe per-epoch metrics (a sweep's pruning).

    Returns every metric of the run (slash-namespaced). Nothing in an existing finished run is overwritten.

    Under a launcher (``torchrun --nproc_per_node N -m training ...``, ``accelerate launch -m training ...``; the
    transformers backend only) every rank trains; the config file, the tracker, the evaluation and metrics.json
    are the main process's (rank 0): the other ranks return their training metrics only.
    """
    rank, world = launcher_rank()
    main = rank == 0
    run_dir = run_dir_of(cfg)
    check_seed(cfg.seed)
    check_device(cfg.train.get("device"), "train.device")
    check_run_dir(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if main and not cfg.resume:
        save_config(cfg, run_dir)
    seed_everything(cfg.seed)
    with tracked(cfg.get("logger") if main else None, run_dir, cfg, wrap_tracker) as tracker:
        detector = build_detector(cfg.model, run_dir, tracker, validate)
        if world > 1 and not detector.distributed:
            raise ConfigError(
                f"model.backend={cfg.model.backend} under a launcher ({world} processes): only the transformers "
                'backend trains with torchrun / accelerate launch (ultralytics: train.device="0,1" launches its own DDP)'
            )
        if main and evaluate is not None and cfg.get("evaluation") and detector.is_detector:
            from training.data import load_dataset

            # fail on a missing or bad evaluation split now, not after hours of training
            load_dataset(cfg.data, list(cfg.evaluation.splits))
        metrics = detector.train(cfg)
        if main and evaluate is not None:
            metrics = evaluate(detector, cfg, run_dir, tracker, metrics)
        return metrics
