"""Experiment trackers: W&B (online with a key, offline without) and a no-op. Secrets never reach a log."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

# whole words at the end of a key: `hf_token`, `api_key`; not `num_detection_tokens`
SECRET_KEY = re.compile(r"(^|[_\-.])(api[_-]?key|key|token|secret|passw(or)?d|credentials?)$", re.I)
SECRET_ENV = ("WANDB_API_KEY", "ROBOFLOW_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def redact(obj, secrets: tuple[str, ...] | None = None):
    """Copy of a config container with secret-looking keys and any value equal to a secret env var masked."""
    values = {os.environ[e] for e in (secrets or SECRET_ENV) if os.environ.get(e)}
    if isinstance(obj, dict):
        return {
            k: ("***" if SECRET_KEY.search(str(k)) and not str(k).endswith("_env") else redact(v, secrets))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str) and obj in values:
        return "***"
    return obj


class Tracker:
    """No-op tracker; also the interface."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_summary(self, metrics: dict[str, float]) -> None: ...

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None: ...

    def log_predictions(self, name, split, preds, class_names, n: int = 8) -> None: ...

    def log_images(self, name: str, paths: list[Path], captions: list[str] | None = None) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class WandbTracker(Tracker):
    """One W&B run. ``mode``: ``auto`` (online iff WANDB_API_KEY is set), ``online``, ``offline``, ``disabled``."""

    def __init__(
        self,
        cfg_dict: dict,
        run_dir: Path,
        project: str,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: str = "auto",
        job_type: str | None = None,
    ):
        import wandb

        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.mode = mode
        self._wandb = wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            group=group,
            tags=list(tags or []),
            job_type=job_type,
            mode=mode,
            dir=str(run_dir),
            config=redact(cfg_dict),
            reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        log.info("W&B run %s (%s)", self.run.id, mode)

    def log_metrics(self, metrics, step=None):
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.run.log(clean, step=step)

    def log_summary(self, metrics):
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.run.summary[k] = v

    def log_table(self, name, columns, rows):
        self.run.log({name: self._wandb.Table(columns=columns, data=rows)})

    def log_images(self, name, paths, captions=None):
        caps = captions or [Path(p).stem for p in paths]
        if paths:
            self.run.log(
                {name: [self._wandb.Image(str(p), caption=c) for p, c in zip(paths, caps, strict=True)]}
            )

    def log_predictions(self, name, split, preds, class_names, n=8):
        """A few images with predicted (score >= 0.25) and ground-truth boxes."""
        wandb = self._wandb
        labels = dict(enumerate(class_names))
        index = split.class_index()
        images = []
        for im in split.images[:n]:
            det = preds.get(im.id)
            pred_boxes = (
                []
                if det is None
                else [
                    {
                        "position": {
                            "minX": float(b[0]),
                            "minY": float(b[1]),
                            "maxX": float(b[2]),
                            "maxY": float(b[3]),
                        },
                        "domain": "pixel",
                        "class_id": int(c),
                        "scores": {"conf": float(s)},
                    }
                    for b, s, c in zip(det.boxes, det.scores, det.labels, strict=True)
                    if s >= 0.25
                ]
            )
            gt_boxes = [
                {
                    "position": {
                        "minX": a.bbox[0],
                        "minY": a.bbox[1],
                        "maxX": a.bbox[0] + a.bbox[2],
                        "maxY": a.bbox[1] + a.bbox[3],
                    },
                    "domain": "pixel",
                    "class_id": index[a.category_id],
                }
                for a in split.annotations_for(im.id)
            ]
            images.append(
                wandb.Image(
                    str(im.file),
                    boxes={
                        "predictions": {"box_data": pred_boxes, "class_labels": labels},
                        "ground_truth": {"box_data": gt_boxes, "class_labels": labels},
                    },
                )
            )
        if images:
            self.run.log({name: images})

    def finish(self, exit_code=0):
        self.run.finish(exit_code=exit_code)


@contextlib.contextmanager
def tracked(logger_cfg, run_dir: Path, cfg, wrap=None):
    """Open the run's tracker; it is always closed, with exit code 0 on success and 1 on an exception."""
    from omegaconf import OmegaConf

    tracker = build_tracker(logger_cfg, run_dir, OmegaConf.to_container(cfg, resolve=True))
    if wrap is not None:
        tracker = wrap(tracker)
    exit_code = 1
    try:
        yield tracker
        exit_code = 0
    finally:
        tracker.finish(exit_code)


def build_tracker(logger_cfg, run_dir: Path, cfg_dict: dict) -> Tracker:
    """Tracker from the ``logger:`` config group (``none`` or ``wandb``)."""
    kind = (logger_cfg or {}).get("type", "none") if logger_cfg is not None else "none"
    if kind == "none":
        return Tracker()
    if kind == "wandb":
        return WandbTracker(
            cfg_dict,
            run_dir,
            project=logger_cfg.get("project", "signature-detection"),
            entity=logger_cfg.get("entity"),
            name=logger_cfg.get("name"),
            group=logger_cfg.get("group"),
            tags=logger_cfg.get("tags"),
            mode=logger_cfg.get("mode", "auto"),
            job_type=logger_cfg.get("job_type"),
        )
    from training.errors import ConfigError

    raise ConfigError(f"logger.type={kind!r}: valid values are ['none', 'wandb']")
