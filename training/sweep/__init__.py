"""Optuna studies over any experiment (the library of ``python -m training.sweep sweep=NAME``, conf/sweep.yaml;
the entry point, which trains, evaluates and summarizes, is ``training/sweep/__main__.py``).

Each trial is a full ``train(cfg)`` run (own run dir under ``<sweep dir>/trials/``) with the trial's parameters as
config overrides; the objective is the shared evaluator's ``sweep.metric``. Per-epoch values reach the pruner
through the run's tracker. Failed trials (crash, NaN) are recorded as FAIL and the study goes on. Workers share
a study through its storage; a trial left RUNNING by a killed worker is marked FAIL (RDB storage: by Optuna's
heartbeat; file storages: by the next worker on the same host, which sees the dead pid) and retried once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import socket
import time
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from training.cli import ConfigError, UserError, first_line
from training.overrides import flatten_overrides
from training.tracking import Tracker

log = logging.getLogger(__name__)


# -- search space --------------------------------------------------------------------------------------
def suggest(trial, space) -> dict:
    """Sample ``space`` (name -> {type, ...}) on ``trial``; returns name -> value."""
    params = {}
    for name, spec in (
        OmegaConf.to_container(space, resolve=True) if not isinstance(space, dict) else space
    ).items():
        kind = spec.get("type")
        if kind in ("float", "int"):  # trial.suggest_float / suggest_int
            num = float if kind == "float" else int
            step = spec.get("step") if kind == "float" else int(spec.get("step", 1))
            params[name] = getattr(trial, f"suggest_{kind}")(
                name, num(spec["low"]), num(spec["high"]), step=step, log=bool(spec.get("log", False))
            )
        elif kind == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
        else:
            raise ConfigError(
                f"sweep.search_space.{name}: type {kind!r} is not one of ['float', 'int', 'categorical']"
            )
    return params


def in_space(spec: dict, value) -> bool:
    """Whether ``value`` is one that the search-space entry ``spec`` can give (a shared storage is untrusted)."""
    if spec.get("type") == "categorical":
        return any(type(value) is type(c) and value == c for c in spec["choices"])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    low, high = float(spec["low"]), float(spec["high"])
    return low - 1e-9 * abs(low) <= value <= high + 1e-9 * abs(high)


def as_overrides(params: dict) -> list[str]:
    return [f"{k}={round(v, 12)!r}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]


# -- settings ------------------------------------------------------------------------------------------
def check_sweep(scfg) -> None:
    """Reject sweep settings no study can run with, before any storage, run dir or trial is touched."""
    n = scfg.get("n_trials")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ConfigError(f"sweep.n_trials={n!r}: must be a positive integer (the number of finished trials)")
    direction = scfg.get("direction")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"sweep.direction={direction!r}: valid values are ['minimize', 'maximize']")
    seeds = list(scfg.get("seeds") or [])
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"sweep.seeds={seeds}: a non-empty list of distinct integers, e.g. sweep.seeds=[0,1,2]"
        )


# -- storage -------------------------------------------------------------------------------------------
def _storage_folder(path: Path, out_dir: Path | None, setting: str) -> None:
    """Make sure the folder of a file storage exists; create it only inside the sweep's own output dir, so that a
    typo in ``sweep.storage`` (``sqlite:///tmp/x/y.db`` for ``sqlite:////tmp/...``) leaves no folders elsewhere."""
    parent = path.parent
    if parent.is_dir():
        # SQLite and the journal write beside the file (its -journal / lock files) on every trial: a read-only folder
        # fails there, trials in, unless refused now
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(
                f"{setting}: folder {parent} is not writable (the study's file and its locks go there)"
            )
        return
    if parent.exists():
        raise ConfigError(f"{setting}: {parent} is not a folder")
    if out_dir is not None and parent.resolve().is_relative_to(Path(out_dir).resolve()):
        parent.mkdir(parents=True, exist_ok=True)
        return
    raise ConfigError(f"{setting}: folder {parent} does not exist (create it first)")


def make_storage(url: str, out_dir: Path | None = None, heartbeat=None):
    """The study storage of a ``sweep.storage`` URL (``$SIGDET_STORAGE`` wins when set).

    Args:
        url: ``sqlite:///PATH``, ``journal:///PATH``, or an RDB URL (PostgreSQL), which gets heartbeats and
            one retry of trials lost with their worker.
        out_dir: The sweep's output dir, the one place where a file storage's missing folder is created.
        heartbeat: ``sweep.heartbeat`` (``heartbeat_s``, ``grace_s``, ``max_retry``), for RDB storages only.

    Raises:
        ConfigError: The file storage's folder is missing, or the storage cannot be opened (one line).
    """
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    env = os.environ.get("SIGDET_STORAGE")
    setting = "$SIGDET_STORAGE" if env else "sweep.storage"
    url = env or str(url)
    if url.startswith(("journal:///", "sqlite:///")):
        journal = url.startswith("journal:///")
        # journal:///abs/path keeps its leading '/'; sqlite:///rel/path is relative (sqlite:////abs/path)
        path = Path(url[len("journal://") :] if journal else url[len("sqlite:///") :])
        _storage_folder(path, out_dir, setting)
        try:
            if journal:
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                return JournalStorage(JournalFileBackend(str(path)))
            return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        except Exception as e:  # a folder in its place, not a database, no permission: one line
            raise ConfigError(
                f"{setting}: cannot open study storage {path} ({e.__class__.__name__}: {first_line(e)})"
            ) from None
    from optuna.exceptions import ExperimentalWarning

    from training.tracking import mask_url_credentials

    if heartbeat is None:
        raise ConfigError(
            f"{setting}: an RDB storage needs sweep.heartbeat (heartbeat_s, grace_s, max_retry)"
        )
    # workers started together on a new database race to create optuna's tables and version row: the loser gets
    # an IntegrityError (or waits on the winner's transaction and then gets one); after a pause the schema is there
    schema_race_attempts = 4
    for attempt in range(1, schema_race_attempts + 1):
        try:
            with warnings.catch_warnings():
                # optuna marks RetryFailedTrialCallback and heartbeats experimental on stderr; they are still what
                # retries a killed worker's trial, and a user's one-line error must stay one line
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", ExperimentalWarning)
                return RDBStorage(
                    url,
                    heartbeat_interval=int(heartbeat.heartbeat_s),
                    grace_period=int(heartbeat.grace_s),
                    failed_trial_callback=RetryFailedTrialCallback(max_retry=int(heartbeat.max_retry)),
                )
        except Exception as e:  # unreachable server, bad URL: one line, without echoing the password
            if attempt < schema_race_attempts and e.__class__.__name__ == "IntegrityError":
                time.sleep(attempt * (0.5 + random.random()))  # jittered: the racers do not meet again
                continue
            hint = (
                ": pip install 'sigdet[postgres]'"
                if isinstance(e, ImportError) and "psycopg" in str(e)
                else ""
            )
            raise UserError(
                f"{setting}: cannot open study storage at {mask_url_credentials(url)} ({e.__class__.__name__}{hint})"
            ) from None


def fail_dead_local_trials(study) -> None:
    """Mark RUNNING trials of dead workers on this host as FAIL (file storages have no heartbeat)."""
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
            continue  # another host's trial, or attributes no worker of ours wrote (the storage is shared)
        with contextlib.suppress(ProcessLookupError, PermissionError, OverflowError):
            os.kill(pid, 0)  # signal 0: the worker is alive
            continue
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        failed.append(t.number)
    if failed:
        log.warning("trials %s were left running by a dead worker: marked FAIL", failed)


def make_sampler(cfg, worker: int):
    import optuna

    s = cfg.sampler
    if s.name != "tpe":
        raise ConfigError(f"sweep.sampler.name={s.name!r}: only 'tpe' is wired")
    return optuna.samplers.TPESampler(
        seed=None if s.seed is None else int(s.seed) + worker, n_startup_trials=int(s.n_startup_trials)
    )


def make_pruner(cfg):
    import optuna

    p = cfg.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(p.n_startup_trials), n_warmup_steps=int(p.n_warmup_steps)
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=int(p.min_resource), reduction_factor=int(p.reduction_factor)
        )
    if p.name == "threshold":
        return optuna.pruners.ThresholdPruner(
            lower=p.get("lower"), upper=p.get("upper"), n_warmup_steps=int(p.n_warmup_steps)
        )
    if p.name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(
        f"sweep.pruner.name={p.name!r}: valid values are ['median', 'hyperband', 'threshold', 'none']"
    )


# -- pruning -------------------------------------------------------------------------------------------
class PruningTracker:
    """Passes everything to the run's tracker and reports ``key`` to the trial every epoch; prunes when told."""

    def __init__(self, inner: Tracker, trial, key: str):
        self.inner, self.trial, self.key = inner, trial, key
        self.reported = 0

    def __getattr__(self, name: str):
        # log_summary, log_table, log_rows, log_predictions, finish: the run's tracker's own
        return getattr(self.inner, name)

    def log_images(self, name, paths) -> None:
        """Not passed on: a trial's images stay out of its tracker (as they always have)."""

    def log_metrics(self, metrics, step=None):
        self.inner.log_metrics(metrics, step)
        if self.key in metrics and step is not None and math.isfinite(float(metrics[self.key])):
            import optuna

            self.trial.report(float(metrics[self.key]), int(step))
            self.reported += 1
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {step} ({self.key}={metrics[self.key]:.4f})")


# -- one trial -----------------------------------------------------------------------------------------
def compose_run(scfg, extra: list[str], run_dir: Path, logger_name: str | None = None) -> DictConfig:
    """The train config of one run: the swept experiment (and model), the sweep's overrides, then ``extra``."""
    from hydra import compose

    model = [f"model={scfg.model}"] if scfg.model else []
    overrides = [f"experiment={scfg.experiment}", *model, *flatten_overrides(scfg.overrides), *extra]
    if scfg.logger != "none":
        overrides.append(f"logger={scfg.logger}")
    cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
        if cfg.logger.type == "wandb":
            cfg.logger.group = str(scfg.study_name)
            cfg.logger.name = logger_name
            cfg.logger.tags = [*(cfg.logger.tags or []), str(scfg.study_name)]
    return cfg


def objective_factory(scfg, out_dir: Path, run_fn):
    """``run_fn(cfg, wrap_tracker) -> metrics`` runs one training + evaluation (injected by the entry point)."""

    def objective(trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = suggest(trial, scfg.search_space)
        run_dir = out_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        # every trial at the first seed: the base and the best trial are trained at the others too (mode=base)
        seed = f"seed={int(scfg.seeds[0])}"
        cfg = compose_run(scfg, [*as_overrides(params), seed], run_dir, f"trial-{trial.number}")
        key = str(scfg.prune_metric.get(str(cfg.model.backend), scfg.metric))
        metrics = run_fn(cfg, lambda tracker: PruningTracker(tracker, trial, key))
        value = metrics.get(str(scfg.metric))
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"trial {trial.number}: {scfg.metric} is {value}")
        for k, v in metrics.items():  # the validation metrics, for the trials table of the summary
            if k.startswith("val/") and isinstance(v, int | float) and math.isfinite(v):
                trial.set_user_attr(k, float(v))
        return float(value)

    return objective


def optimize(scfg, out_dir: Path, run_fn, worker: int = 0):
    """Create or join the study and run trials until it holds ``n_trials`` finished ones."""
    import optuna
    from optuna.trial import TrialState

    check_sweep(scfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is our log's job
    storage = make_storage(scfg.storage, out_dir, scfg.heartbeat)
    try:
        study = optuna.create_study(
            study_name=str(scfg.study_name),
            storage=storage,
            direction=str(scfg.direction),
            load_if_exists=True,
            sampler=make_sampler(scfg, worker),
            pruner=make_pruner(scfg),
        )
    except Exception as e:  # an OSError (the journal's file) is the CLI's one line about the place
        if e.__class__.__name__ != "OperationalError":  # SQLAlchemy's: read-only database, disk full, locked
            raise
        raise UserError(f"sweep.storage: cannot write the study ({first_line(e)})") from None
    study.set_user_attr("metric", str(scfg.metric))
    if not study.get_trials(deepcopy=False) and scfg.enqueue:
        for params in OmegaConf.to_container(scfg.enqueue, resolve=True):
            study.enqueue_trial(params)
    done_states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    objective = objective_factory(scfg, out_dir, run_fn)
    while True:
        fail_dead_local_trials(study)
        if len(study.get_trials(deepcopy=False, states=done_states)) >= int(scfg.n_trials):
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    return study
