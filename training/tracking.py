"""Experiment trackers: W&B (online with a key, offline without, WANDB_MODE first) and a no-op; the masking of
secrets (:func:`redact`) for everything written or logged."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from pathlib import Path

from training.cli import ConfigError

log = logging.getLogger(__name__)

# whole words at the end of a key: `hf_token`, `api_key`; not `num_detection_tokens`
SECRET_KEY = re.compile(r"(^|[_\-.])(api[_-]?key|key|token|secret|passw(or)?d|credentials?)$", re.I)
# PGPASSWORD: libpq's (psycopg's) password for a PostgreSQL study storage given without one in its URL
SECRET_ENV = ("WANDB_API_KEY", "ROBOFLOW_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PGPASSWORD")
MASK = "***"
# `scheme://user:PASSWORD@host`: the password runs to the last `@` before the next URL, so that a raw (not
# percent-encoded) `@`, `/` or `:` in it, which SQLAlchemy accepts, is masked too; the user part may hold an `@`
# (`me@corp.com:pw@host`), and Hydra escapes the `:`s of a swept value (`postgresql\://u\:pw@host`). A URL
# without a password but with an `@` later in its text loses that stretch as well: too much masked beats a
# password on disk.
URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*\\?://[^\s:/?#]*:)(?P<password>(?:(?!://).)*)@", re.S
)
# `key=value` where the text starts or a new item starts (Hydra's override strings and their comma-joined
# `override_dirname`, URL query strings); `+`/`++`/`~` are Hydra's override prefixes
ASSIGNMENT = re.compile(r"(?:^|(?<=[\s,?&;]))[+~]{0,2}(?P<key>[\w.\-/]+)=")
# W&B's own values for WANDB_MODE and wandb.init(mode=...): dryrun is offline, run is online
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")


def is_secret_key(key: object) -> bool:
    """A config key (or the dotted key of an override) whose value is a credential; also a secret env var's name
    (``hydra.job.env_set.PGPASSWORD``)."""
    key = str(key)
    return key.rsplit(".", 1)[-1] in SECRET_ENV or (bool(SECRET_KEY.search(key)) and not key.endswith("_env"))


def mask_url_credentials(text: str) -> str:
    """``postgresql://user:PASSWORD@host/db`` -> ``postgresql://user:***@host/db``, anywhere in ``text``."""
    return URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)


def mask_text(text: str, values: set[str] | frozenset[str] = frozenset()) -> str:
    """``text`` with URL passwords masked and, in ``key=value`` text (a Hydra override), everything after the
    ``=`` masked when the key looks secret or the value starts with one of ``values`` (secret env values); text
    equal to one of ``values`` is masked whole.

    Everything after the ``=``, not just up to the next ``,``: a secret may hold the separators themselves.
    """
    if text in values:
        return MASK
    # URLs first: a password may itself hold `,token=`, which must not split it
    text = mask_url_credentials(text)
    for m in ASSIGNMENT.finditer(text):
        if is_secret_key(m["key"]) or any(text.startswith(v, m.end()) for v in values):
            return text[: m.end()] + MASK
    return text


def redact(obj):
    """Copy of a config container with its credentials masked: values of secret-looking keys, values equal to a
    secret env var (:data:`SECRET_ENV`), URL passwords and secret ``key=value`` overrides.

    The one masking function for everything we (or Hydra, through training/runfiles.py) write: W&B config, the
    run's ``config.yaml`` and Hydra's ``.hydra/*.yaml`` and ``multirun.yaml``.
    """
    values = frozenset(os.environ[e] for e in SECRET_ENV if os.environ.get(e))
    return _redact(obj, values)


def _redact(obj, values: frozenset[str]):
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_key(k) else _redact(v, values)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v, values) for v in obj]
    if isinstance(obj, str):
        return mask_text(obj, values)
    return obj


def wandb_mode(configured: str = "auto") -> tuple[str, str]:
    """The W&B mode of a run and why: ``WANDB_MODE`` from the environment wins (a machine without network sets
    it, and an online run there hangs), then ``logger.mode``; ``auto`` is online iff WANDB_API_KEY is set.

    Raises:
        ConfigError: ``WANDB_MODE`` or ``logger.mode`` is not a mode W&B knows.
    """
    env = os.environ.get("WANDB_MODE", "").strip()
    if env:
        if env not in WANDB_MODES:
            raise ConfigError(f"WANDB_MODE={env!r}: valid values are {list(WANDB_MODES)}")
        over = f", over logger.mode={configured}" if configured != env else ""
        return env, f"WANDB_MODE={env} in the environment{over}"
    if configured not in ("auto", *WANDB_MODES):
        raise ConfigError(f"logger.mode={configured!r}: valid values are {['auto', *WANDB_MODES]}")
    if configured != "auto":
        return configured, f"logger.mode={configured}"
    if os.environ.get("WANDB_API_KEY"):
        return "online", "logger.mode=auto and WANDB_API_KEY is set"
    return "offline", "logger.mode=auto and no WANDB_API_KEY"


class Tracker:
    """No-op tracker; also the interface."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_summary(self, metrics: dict[str, float]) -> None: ...

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None: ...

    def log_rows(self, name: str, rows: list[dict]) -> None:
        """:meth:`log_table` of dict rows (the columns are the first row's keys); nothing for no rows."""
        if rows:
            self.log_table(name, list(rows[0]), [list(r.values()) for r in rows])

    def log_predictions(self, name, split, preds, class_names, n: int, conf: float) -> None: ...

    def log_images(self, name: str, paths: list[Path]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


def _wb_box(x0, y0, x1, y1, class_id: int, **extra) -> dict:
    """One box of a W&B image overlay, in pixels; ``extra``: e.g. ``scores``."""
    return {
        "position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1},
        "domain": "pixel",
        "class_id": class_id,
        **extra,
    }


class WandbTracker(Tracker):
    """One W&B run. ``mode``: ``auto`` (online iff WANDB_API_KEY is set) or one of :data:`WANDB_MODES`;
    ``WANDB_MODE`` in the environment wins over both (see :func:`wandb_mode`). ``init``: the other wandb.init
    arguments of the logger schema (``project``, ``entity``, ``name``, ``group``, ``job_type``)."""

    def __init__(
        self,
        cfg_dict: dict,
        run_dir: Path,
        mode: str = "auto",
        tags: list[str] | None = None,
        init_timeout_s: float | None = None,
        **init,
    ):
        from training.cli import optional_import

        wandb = optional_import("wandb", "wandb", "logger=wandb")

        # decided before wandb.init: its mode= argument beats WANDB_MODE, and the choice is logged
        mode, why = wandb_mode(mode)
        log.info("W&B mode %s (%s)", mode, why)
        self.mode = mode
        self._wandb = wandb
        run_dir.mkdir(parents=True, exist_ok=True)

        def start(mode: str):
            timeout = {} if init_timeout_s is None else {"init_timeout": float(init_timeout_s)}
            return wandb.init(
                **init,
                tags=list(tags or []),
                mode=mode,
                dir=str(run_dir),
                config=redact(cfg_dict),
                reinit="finish_previous",
                settings=wandb.Settings(console="off", x_disable_stats=True, **timeout),
            )

        try:
            self.run = start(mode)
        except wandb.errors.Error as e:  # CommError / timeout: no route to the service, or it is down
            if mode not in ("online", "run", "shared"):
                raise
            # a training must not die (or wait minutes) because the tracker cannot reach its server: the run is
            # kept on disk and can be uploaded once the network is back
            log.warning(
                "W&B unreachable (%s: %s); this run logs offline: sync it later with `wandb sync %s`",
                e.__class__.__name__,
                str(e).splitlines()[0][:160] if str(e) else "",
                run_dir / "wandb" / "offline-run-*",
            )
            self.mode = mode = "offline"
            self.run = start(mode)
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

    def log_images(self, name, paths):
        if paths:
            self.run.log({name: [self._wandb.Image(str(p), caption=Path(p).stem) for p in paths]})

    def log_predictions(self, name, split, preds, class_names, n: int, conf: float):
        """``n`` images with ground-truth boxes and the predicted ones scoring ``conf`` or more."""
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
                    _wb_box(*map(float, b), int(c), scores={"conf": float(s)})
                    for b, s, c in zip(det.boxes, det.scores, det.labels, strict=True)
                    if s >= conf
                ]
            )
            gt_boxes = [
                _wb_box(
                    a.bbox[0], a.bbox[1], a.bbox[0] + a.bbox[2], a.bbox[1] + a.bbox[3], index[a.category_id]
                )
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
    kind = "none" if logger_cfg is None else str(logger_cfg.type)
    if kind == "none":
        return Tracker()
    if kind == "wandb":
        from omegaconf import OmegaConf

        # the logger schema's fields (training/config.py Logger) are WandbTracker's keyword arguments
        kwargs = {k: v for k, v in OmegaConf.to_container(logger_cfg, resolve=True).items() if k != "type"}
        return WandbTracker(cfg_dict, run_dir, **kwargs)
    raise ConfigError(f"logger.type={kind!r}: valid values are ['none', 'wandb']")
