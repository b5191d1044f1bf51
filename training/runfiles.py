"""Hydra's run files (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``; a sweep's ``multirun.yaml``)
written with their secrets masked, and never into a run dir that the entry point refuses.

Hydra itself writes those files in clear (an override such as ``sweep.storage=postgresql://user:PASSWORD@host/db``
lands in all three) and before the entry point runs, so before a finished run's dir can be refused. The roots
therefore set ``hydra.output_subdir: null`` and register :class:`RunFiles` (conf/hydra/callbacks/run_files.yaml),
which writes the same files, in Hydra's layout, through :func:`training.tracking.redact`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from training.cli import ConfigError, UserError
from training.fileio import write_atomic
from training.tracking import redact

log = logging.getLogger(__name__)

GUARD_PACKAGES = ("training.", "evaluation.", "export.")

# what marks a folder as the run of a sigdet command: a train or evaluate run (metrics.json; weights/ while it
# trains), an export (its manifest), a leakage audit, a predict run. No command writes into a folder holding one
# (its .hydra/ records would be replaced by the new command's), except the run that a command continues
# (``resumable``: train's weights/, predict's pages.jsonl, each with resume=true).
RUN_MARKERS = (
    "metrics.json",
    "sigdet_export.json",
    "leakage.json",
    "predictions.json",
    "pages.jsonl",
    "weights",
)


def held_run(run_dir: Path, resumable: Sequence[str] = ()) -> str | None:
    """The first of :data:`RUN_MARKERS` in ``run_dir`` (apart from ``resumable``); None for a folder of no run."""
    return next((m for m in RUN_MARKERS if m not in resumable and (Path(run_dir) / m).exists()), None)


def refuse_held_run(run_dir: Path, resumable: Sequence[str] = ()) -> None:
    """:class:`UserError` when ``run_dir`` holds the run of a sigdet command (see :data:`RUN_MARKERS`)."""
    held = held_run(run_dir, resumable)
    if held is not None:
        raise UserError(
            f"{run_dir} already holds a run ({held}); choose another hydra.run.dir (nothing is overwritten)"
        )


MULTIRUN_FILE = "multirun.yaml"  # Hydra's name, written by its basic sweeper


def masked_yaml(cfg: DictConfig | ListConfig) -> str:
    """``OmegaConf.to_yaml(cfg)`` (unresolved, as Hydra saves it) with every credential masked."""
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    return OmegaConf.to_yaml(OmegaConf.create(redact(container)))


def _drop_file_handlers(logging_cfg: DictConfig | None) -> None:
    """Remove the handlers that write files (``filename:``) from a ``logging.config.dictConfig`` config.

    The handler must go from the ``handlers`` map too: dictConfig builds (and opens) every handler listed there,
    used or not.
    """
    if not logging_cfg or not logging_cfg.get("handlers"):
        return
    files = [name for name, h in logging_cfg.handlers.items() if h is not None and "filename" in h]
    if not files:
        return
    users = [logging_cfg.get("root"), *(logging_cfg.get("loggers") or {}).values()]
    with read_write(logging_cfg), open_dict(logging_cfg):
        for name in files:
            del logging_cfg.handlers[name]
        for user in users:
            if user is not None and user.get("handlers") is not None:
                user.handlers = [h for h in user.handlers if h not in files]


def _detach_file_handlers(run_dir: Path) -> None:
    """Close and remove every logging FileHandler writing into ``run_dir``."""
    loggers = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in list(lg.handlers):
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve().is_relative_to(run_dir):
                lg.removeHandler(h)
                h.close()


class RunFiles(Callback):
    """Writes Hydra's run files with secrets masked; leaves a refused run dir alone.

    Args:
        subdir: folder of the run dir for ``config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` (Hydra's
            ``hydra.output_subdir``, which the roots set to null so that Hydra writes nothing); null: none.
        finished: names whose presence in the run dir makes the entry point refuse it (a finished run); a folder
            holding the run of any sigdet command (:data:`RUN_MARKERS`) is refused as well.
        resumable: the markers of a run the entry point continues (resume=true) rather than refuses.
        guard: dotted path of ``fn(cfg, run_dir)`` raising :class:`~training.cli.UserError` when the entry
            point will refuse the run dir, for rules beyond a file's presence (the same function it calls).
        multirun: mask the sweep's ``multirun.yaml`` (``-m``) too.
    """

    def __init__(
        self,
        subdir: str | None = ".hydra",
        finished: Sequence[str] = (),
        guard: str | None = None,
        resumable: Sequence[str] = (),
        multirun: bool = True,
    ) -> None:
        self.subdir = subdir
        self.finished = list(finished or [])
        self.resumable = list(resumable or [])
        # a function of ours (get_method runs any dotted path it is given, without Hydra's checks of _target_)
        if guard is not None and not str(guard).startswith(GUARD_PACKAGES):
            raise ConfigError(f"run_files.guard={guard!r}: must be a function of {list(GUARD_PACKAGES)}")
        self.guard = guard
        self.multirun = multirun
        self._multirun_text: str | None = None
        self._multirun_path: Path | None = None

    # -- which run dirs are left alone ---------------------------------------------------------------------
    def refused(self, config: DictConfig, run_dir: Path) -> bool:
        """Whether the entry point will refuse ``run_dir`` (so nothing may be written there)."""
        if any((run_dir / name).exists() for name in self.finished):
            return True
        # a root that refuses run dirs (finished or guard: train, evaluate, export, leakage, predict) refuses the
        # run of another command too; the others (benchmark, sweep, select) keep writing their records
        if (self.finished or self.guard) and held_run(run_dir, self.resumable):
            return True
        if self.guard:
            try:
                get_method(self.guard)(config, run_dir)
            except UserError:
                return True
        return False

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before Hydra configures the job's logging: drop its file handler when the run dir is refused.

        Hydra's ``<job>.log`` FileHandler opens (or creates) its file as soon as logging is configured, which
        happens before ``on_job_start``; removing it from ``hydra.job_logging`` here means it is never opened.
        """
        try:
            # run_job sets the same right after; the run dir may interpolate the hydra node
            HydraConfig.instance().set_config(config)
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
        except Exception as e:  # on_job_start checks again, with the dir Hydra settled on
            log.debug("run files: run dir not known before the job (%s)", e)
            return
        if self.refused(config, run_dir):
            with read_write(config.hydra):
                _drop_file_handlers(config.hydra.get("job_logging"))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the masked ``.hydra`` files, or nothing (and no job log) in a refused run dir."""
        self._write_multirun()
        run_dir = Path(config.hydra.runtime.output_dir).resolve()
        if self.refused(config, run_dir):
            # a multirun job, or a run dir unknown at on_run_start: logging is configured already, so the log
            # file exists (created empty where it did not); nothing may be written to it
            _detach_file_handlers(run_dir)
            return
        if config.hydra.get("output_subdir") is not None:
            log.warning(
                "hydra.output_subdir=%s: Hydra wrote its run files there unmasked; to move the masked ones set "
                "hydra.callbacks.run_files.subdir instead",
                config.hydra.output_subdir,
            )
        if self.subdir is None:
            return
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        hydra_cfg = HydraConfig.instance().cfg
        out = run_dir / self.subdir
        out.mkdir(parents=True, exist_ok=True)
        # the same files, names and content as Hydra's run_job writes (hydra/core/utils.py), masked
        write_atomic(out / "config.yaml", masked_yaml(task_cfg))
        write_atomic(out / "hydra.yaml", masked_yaml(hydra_cfg))
        write_atomic(out / "overrides.yaml", masked_yaml(config.hydra.overrides.task))

    # -- multirun.yaml -------------------------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Send Hydra's clear ``multirun.yaml`` to the null device; the masked one replaces it at the first job.

        Hydra's sweeper saves the config right before launching the jobs, with no hook in between, and the jobs
        are composed from the clear overrides, so the config cannot be masked in place: the file is made a
        link to the null device, which Hydra's save writes through, and the first job (or the sweep's end)
        puts the masked text in its place.
        """
        if not self.multirun:
            return
        try:
            sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
            text = masked_yaml(config)
        except Exception as e:  # the sweep dir needs the job's hydra node: Hydra's file stays as it is
            log.warning("%s is written by Hydra unmasked: %s", MULTIRUN_FILE, e)
            return
        path = sweep_dir / MULTIRUN_FILE
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            path.unlink(missing_ok=True)
            path.symlink_to(os.devnull)
        except OSError as e:  # no symlinks (Windows without the privilege): masked after Hydra's save instead
            log.warning("%s: no link to %s (%s); masked once the first job starts", path, os.devnull, e)
        self._multirun_path, self._multirun_text = path, text

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Masked ``multirun.yaml`` for a sweep whose jobs never started (or ran in other processes)."""
        self._write_multirun()

    def _write_multirun(self) -> None:
        if self._multirun_path is None or self._multirun_text is None:
            return
        write_atomic(self._multirun_path, self._multirun_text)
        self._multirun_path = self._multirun_text = None
