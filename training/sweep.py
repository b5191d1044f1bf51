"""``python -m training.sweep sweep=NAME``: Optuna studies over any experiment (see conf/sweep.yaml).

Each trial is a full ``train(cfg)`` run (own run dir under ``<sweep dir>/trials/``) with the trial's parameters as
config overrides; the objective is the shared evaluator's ``sweep.metric``. Per-epoch values reach the pruner
through the run's tracker. Failed trials (crash, NaN) are recorded as FAIL and the study goes on. Workers share
a study through its storage; a trial left RUNNING by a killed worker is marked FAIL (RDB storage: by Optuna's
heartbeat; file storages: by the next worker on the same host, which sees the dead pid) and retried once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import socket
import time
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from evaluation.metrics import HEADLINE
from evaluation.report import markdown_table, pyplot, write_csv
from training.cli import CONF, ConfigError, DataError, UserError, cli, first_line
from training.overrides import flatten_overrides
from training.tracking import Tracker
from training.workers import pin_device, worker_index

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


# -- storage -------------------------------------------------------------------------------------------
def _storage_folder(path: Path, out_dir: Path | None, setting: str) -> None:
    """Make sure the folder of a file storage exists; create it only inside the sweep's own output dir, so that a
    typo in ``sweep.storage`` (``sqlite:///tmp/x/y.db`` for ``sqlite:////tmp/...``) leaves no folders elsewhere."""
    parent = path.parent
    if parent.is_dir():
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
    """The train config of one run: the swept experiment, the sweep's overrides, then ``extra``."""
    from hydra import compose

    overrides = [f"experiment={scfg.experiment}", *flatten_overrides(scfg.overrides), *extra]
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
        cfg = compose_run(scfg, as_overrides(params), run_dir, f"trial-{trial.number}")
        key = str(scfg.prune_metric.get(str(cfg.model.backend), scfg.metric))
        metrics = run_fn(cfg, lambda tracker: PruningTracker(tracker, trial, key))
        value = metrics.get(str(scfg.metric))
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"trial {trial.number}: {scfg.metric} is {value}")
        for k in HEADLINE:
            if f"val/{k}" in metrics:
                trial.set_user_attr(f"val/{k}", float(metrics[f"val/{k}"]))
        return float(value)

    return objective


def optimize(scfg, out_dir: Path, run_fn, worker: int = 0):
    """Create or join the study and run trials until it holds ``n_trials`` finished ones."""
    import optuna
    from optuna.trial import TrialState

    check_sweep(scfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is our log's job
    storage = make_storage(scfg.storage, out_dir, scfg.heartbeat)
    study = optuna.create_study(
        study_name=str(scfg.study_name),
        storage=storage,
        direction=str(scfg.direction),
        load_if_exists=True,
        sampler=make_sampler(scfg, worker),
        pruner=make_pruner(scfg),
    )
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


# -- summary -------------------------------------------------------------------------------------------
def _run_json(run_dir: Path) -> dict:
    """A run's metrics.json (``metrics``, ``provenance``); {} while the run has not finished."""
    f = Path(run_dir) / "metrics.json"
    if not f.is_file():
        return {}
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{f}: unreadable ({e.__class__.__name__}: {first_line(e, 120)})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics", {}), dict):
        raise DataError(f"{f}: not a metrics.json of a run (expected an object with a metrics object)")
    return doc


def _log_summary(scfg, out_dir: Path, rows: list[dict], trial_rows: list[dict], plots: dict) -> None:
    """With ``sweep.logger=wandb``: one "summary" run in the study's group holding the base-vs-best and trials
    tables and the Optuna plots (history, importances, parallel coordinates), so the project page shows the
    sweep without building panels by hand."""
    if scfg.logger == "none":
        return
    from training.tracking import tracked

    cfg = compose_run(scfg, [], out_dir / "summary_run", "summary")
    with open_dict(cfg):
        cfg.logger.tags = [*cfg.logger.tags, "sweep-summary"]
        cfg.logger.job_type = "sweep-summary"
    with tracked(cfg.logger, out_dir, cfg) as tracker:
        tracker.log_rows("sweep/base_vs_best", rows)
        tracker.log_rows("sweep/trials", [{k: v for k, v in r.items() if k != "run_dir"} for r in trial_rows])
        tracker.log_images("sweep/plots", [Path(p) for p in plots.values() if str(p).endswith(".png")])


def train_base(scfg, out_dir: Path, run_fn) -> None:
    """The base run: the swept experiment with its default parameters, trained and evaluated like a trial
    (``<out_dir>/base``), unless it is already there. ``mode=base`` (and ``mode=all``) runs it."""
    base_dir = out_dir / "base"
    if not _run_json(base_dir).get("metrics"):
        run_fn(compose_run(scfg, [], base_dir, "base"), None)


def summarize(scfg, out_dir: Path) -> None:
    """Best trial as an experiment config, Optuna plots, trials table, and the base-vs-best table. Only reads:
    a base run not trained yet (``mode=base``) is shown as n/a."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(
            study_name=str(scfg.study_name), storage=make_storage(scfg.storage, out_dir, scfg.heartbeat)
        )
    except KeyError:  # optuna's "Record does not exist"
        raise UserError(
            f"sweep.study_name: no study {scfg.study_name!r} in the storage yet; run mode=optimize first"
        ) from None
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    if not counts["COMPLETE"]:
        raise UserError(f"study {scfg.study_name}: no completed trial yet ({counts})")
    best = study.best_trial
    out_dir.mkdir(parents=True, exist_ok=True)

    # the best parameters as a ready-to-run experiment: the swept experiment's file plus the sweep's overrides
    # and the best parameters (written beside the study; run it with the searchpath printed in its header)
    exp_dir = out_dir / "experiment"
    exp_dir.mkdir(exist_ok=True)
    name = f"{scfg.study_name}_best"
    exp = OmegaConf.load(CONF / "experiment" / f"{scfg.experiment}.yaml")
    exp.merge_with(OmegaConf.create(OmegaConf.to_container(scfg.overrides, resolve=True) or {}))
    # the storage is shared with other workers (a database): only names of sweep.search_space, with values
    # its entries can give, go into a file that is then run (never a hydra.* key, a ${...} or a path of its own)
    space = OmegaConf.to_container(scfg.search_space, resolve=True)
    for k, v in best.params.items():
        if k not in space or not in_space(space[k], v):
            raise DataError(
                f"{scfg.storage}: study {scfg.study_name}, trial {best.number}: parameter {k}={v!r} is not one "
                "of sweep.search_space; refused to write it into an experiment file"
            )
        OmegaConf.update(exp, k, v, force_add=True)
    exp.task_name = name
    header = [
        "# @package _global_",
        f"# Best trial {best.number} of study {scfg.study_name}: {scfg.metric} = {best.value:.4f}",
        f"#   python -m training hydra.searchpath=[file://{out_dir.resolve()}] experiment={name}",
    ]
    (exp_dir / f"{name}.yaml").write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(exp), encoding="utf-8")

    # base: the experiment with its default parameters, trained and evaluated the same way (train_base)
    base_dir = out_dir / "base"
    base_doc = _run_json(base_dir)
    base = base_doc.get("metrics", {})
    if not base:
        log.warning("no base run in %s yet: the base column is n/a (mode=base trains it)", base_dir)
    best_metrics = _run_json(Path(best.user_attrs.get("run_dir", ""))).get("metrics", {})
    rows = []
    for k in HEADLINE:
        b, t = base.get(f"val/{k}"), best_metrics.get(f"val/{k}")
        diff = "" if b is None or t is None else f"{100 * (t - b):+.2f}"
        rows.append(
            {
                "metric": k,
                "base": "n/a" if b is None else f"{b:.4f}",
                f"best trial {best.number}": "n/a" if t is None else f"{t:.4f}",
                "difference (points)": diff,
            }
        )

    plots = {}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        plt = pyplot()
        from optuna.visualization import matplotlib as ovm

        for fname, fn in (
            ("history", ovm.plot_optimization_history),
            ("importances", ovm.plot_param_importances),
            ("parallel_coordinates", ovm.plot_parallel_coordinate),
        ):
            try:
                ax = fn(study)
                fig = ax if hasattr(ax, "savefig") else (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                path = out_dir / f"{fname}.png"
                fig.set_size_inches(8, 5)
                fig.tight_layout()
                fig.savefig(path, dpi=110)
                plt.close(fig)
                plots[fname] = str(path)
            except Exception as e:  # e.g. importances need two completed trials with different values
                msg = str(e).splitlines()[0][:120] if str(e) else ""
                plots[fname] = f"not drawn: {e.__class__.__name__}: {msg}"
    except ImportError as e:  # pragma: no cover
        plots["error"] = str(e)

    trial_rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            **{k: t.params.get(k) for k in scfg.search_space},
            "run_dir": t.user_attrs.get("run_dir", ""),
        }
        for t in trials
    ]
    write_csv(out_dir / "trials.csv", trial_rows)
    write_csv(out_dir / "base_vs_best.csv", rows)
    inert = {k: v for k, v in scfg.inert.items() if k in scfg.search_space}
    md = [
        f"# Sweep {scfg.study_name}",
        "",
        f"Experiment `{scfg.experiment}`; objective `{scfg.metric}` ({scfg.direction}); trials: "
        + ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if n),
        "",
        f"Best trial {best.number}: {scfg.metric} = {best.value:.4f}; parameters: "
        + ", ".join(f"`{k}={v}`" for k, v in best.params.items()),
        "",
        markdown_table(rows, "## Base model vs best trial (validation split, shared evaluator)\n"),
    ]
    if inert:
        md += [
            "## Inert parameters",
            "",
            *[f"- `{k}`: {v}. Its sampled values say nothing about the model." for k, v in inert.items()],
            "",
        ]
    md += [
        "## Plots",
        "",
        *[f"- {k}: {v}" for k, v in plots.items()],
        "",
        f"Run the best parameters: `python -m training hydra.searchpath=[file://{out_dir.resolve()}] experiment={name}`",
    ]
    (out_dir / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    summary = {k: str(scfg[k]) for k in ("study_name", "experiment", "metric", "direction")}
    summary |= {
        "data": base_doc.get("provenance", {}).get("data"),
        "counts": {k: n for k, n in counts.items() if n},
        "best_number": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "base": base,
        "best": best_metrics,
        "plots": plots,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    _log_summary(scfg, out_dir, rows, trial_rows, plots)
    print("\n".join(md))


@cli("sweep")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from evaluation.run import evaluate_run, validator
    from training.train import train

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    scfg = cfg.sweep

    def run_fn(train_cfg, wrap):
        return train(
            train_cfg, evaluate=evaluate_run, validate=validator(train_cfg.evaluation), wrap_tracker=wrap
        )

    if cfg.mode not in ("optimize", "base", "summary", "all"):
        raise ConfigError(f"mode={cfg.mode!r}: valid values are ['optimize', 'base', 'summary', 'all']")
    if cfg.mode in ("optimize", "all"):
        worker = worker_index()
        pin_device(scfg.devices, worker)
        optimize(scfg, out_dir, run_fn, worker=worker)
    if cfg.mode in ("base", "all"):
        train_base(scfg, out_dir, run_fn)
    if cfg.mode in ("summary", "all"):
        summarize(scfg, out_dir)


if __name__ == "__main__":
    main()
