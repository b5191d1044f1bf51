"""The summary of an Optuna sweep (``python -m training.sweep ... mode=summary``): the best trial as a ready-to-run
experiment, the Optuna plots, the trials table and the base-vs-best table, in ``summary.md`` / ``summary.json``
(and a W&B summary run with ``sweep.logger=wandb``). Only reads the study and the runs' ``metrics.json``."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from evaluation.metrics import HEADLINE
from evaluation.report import markdown_table, pyplot, write_csv
from training.cli import CONF, DataError, UserError, first_line
from training.sweep import compose_run, in_space, make_storage

log = logging.getLogger(__name__)


def run_json(run_dir: Path) -> dict:
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


def summarize(scfg, out_dir: Path) -> None:
    """Best trial as an experiment config, Optuna plots, trials table, and the base-vs-best table. Only reads:
    a base run not trained yet (``mode=base``) is shown as n/a."""
    study, trials, counts = _load_study(scfg, out_dir)
    best = study.best_trial
    out_dir.mkdir(parents=True, exist_ok=True)
    name = write_best_experiment(scfg, out_dir, best)

    # base: the experiment with its default parameters, trained and evaluated the same way (mode=base)
    base_dir = out_dir / "base"
    base_doc = run_json(base_dir)
    base = base_doc.get("metrics", {})
    if not base:
        log.warning("no base run in %s yet: the base column is n/a (mode=base trains it)", base_dir)
    best_metrics = run_json(Path(best.user_attrs.get("run_dir", ""))).get("metrics", {})
    rows = _base_vs_best(base, best_metrics, best.number)
    plots = _plots(study, out_dir)
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
    md = _markdown(scfg, out_dir, best, counts, rows, plots, name)
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


def _load_study(scfg, out_dir: Path):
    """The study, its trials and the count of trials per state; one line when it has no completed trial."""
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
    return study, trials, counts


def write_best_experiment(scfg, out_dir: Path, best) -> str:
    """The best parameters as a ready-to-run experiment (``<out_dir>/experiment/<study>_best.yaml``): the swept
    experiment's file plus the sweep's overrides and the best parameters; returns its name."""
    exp_dir = out_dir / "experiment"
    exp_dir.mkdir(exist_ok=True)
    name = f"{scfg.study_name}_best"
    exp = OmegaConf.load(CONF / "experiment" / f"{scfg.experiment}.yaml")
    if scfg.model:  # the swept model, as `model=` chose it for every trial
        with open_dict(exp):
            exp.defaults = [*exp.get("defaults", []), {"override /model": str(scfg.model)}]
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
    return name


def _base_vs_best(base: dict, best_metrics: dict, number: int) -> list[dict]:
    """One row per headline metric: the base run's and the best trial's validation value and their difference."""
    rows = []
    for k in HEADLINE:
        b, t = base.get(f"val/{k}"), best_metrics.get(f"val/{k}")
        diff = "" if b is None or t is None else f"{100 * (t - b):+.2f}"
        rows.append(
            {
                "metric": k,
                "base": "n/a" if b is None else f"{b:.4f}",
                f"best trial {number}": "n/a" if t is None else f"{t:.4f}",
                "difference (points)": diff,
            }
        )
    return rows


def _plots(study, out_dir: Path) -> dict:
    """Optuna's history, importances and parallel-coordinates plots as PNGs: name -> path, or why not drawn."""
    import optuna

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
    return plots


def _markdown(scfg, out_dir: Path, best, counts: dict, rows: list[dict], plots: dict, name: str) -> list[str]:
    """The lines of ``summary.md``."""
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
    return md + [
        "## Plots",
        "",
        *[f"- {k}: {v}" for k, v in plots.items()],
        "",
        f"Run the best parameters: `python -m training hydra.searchpath=[file://{out_dir.resolve()}] experiment={name}`",
    ]
