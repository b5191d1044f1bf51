"""The summary of an Optuna sweep (``python -m training.sweep ... mode=summary``): the best trial as a ready-to-run
experiment, the Optuna plots, the trials table and the base-vs-best table, in ``summary.md`` / ``summary.json``
(and a W&B summary run with ``sweep.logger=wandb``). Only reads the study and the runs' ``metrics.json``.

With several ``sweep.seeds`` the base-vs-best table compares the base at every seed (``base/seed_<s>/``) with the
best trial (trained at the first seed) and its parameters re-trained at the others (``best/trial_<n>/seed_<s>/``,
``mode=base``): mean ± std [min, max] per metric over the seeds that have finished."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from evaluation.metrics import HEADLINE
from evaluation.report import fmt_over_seeds, markdown_table, mean_over_seeds, pyplot, write_csv
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


def base_dir(out_dir: Path, seed: int) -> Path:
    """The base run at ``seed``: the swept experiment with its default parameters."""
    return out_dir / "base" / f"seed_{seed}"


def best_seed_dir(out_dir: Path, number: int, seed: int) -> Path:
    """Trial ``number``'s parameters re-trained at ``seed`` (one of ``sweep.seeds`` after the first, at which the
    trial itself trained); by trial number, so that a study whose best trial changes never mixes two trials."""
    return out_dir / "best" / f"trial_{number:04d}" / f"seed_{seed}"


def seed_runs(scfg, out_dir: Path, best) -> tuple[dict[int, dict], dict[int, dict]]:
    """The finished runs of the base-vs-best table, seed -> metrics.json document: the base at every seed, and
    the best trial (its own run at the first seed, its parameters re-trained at the others)."""
    seeds = [int(s) for s in scfg.seeds]
    base = {s: doc for s in seeds if (doc := run_json(base_dir(out_dir, s))).get("metrics")}
    trial_dir = best.user_attrs.get("run_dir")
    best_docs = [run_json(Path(trial_dir)) if trial_dir else {}]
    best_docs += [run_json(best_seed_dir(out_dir, best.number, s)) for s in seeds[1:]]
    return base, {s: doc for s, doc in zip(seeds, best_docs, strict=True) if doc.get("metrics")}


def summarize(scfg, out_dir: Path) -> None:
    """Best trial as an experiment config, Optuna plots, trials table, and the base-vs-best table. Only reads:
    base runs (and the best trial's extra seeds) not trained yet (``mode=base``) are left out, n/a without any."""
    study, trials, counts = load_study(scfg, out_dir)
    best = study.best_trial
    out_dir.mkdir(parents=True, exist_ok=True)
    name = write_best_experiment(scfg, out_dir, best)

    base_docs, best_docs = seed_runs(scfg, out_dir, best)
    seeds = [int(s) for s in scfg.seeds]
    if len(base_docs) < len(seeds) or len(best_docs) < len(seeds):
        log.warning(
            "base vs best: %d of %d base seeds and %d of %d best-trial seeds have finished (mode=base trains them)",
            len(base_docs),
            len(seeds),
            len(best_docs),
            len(seeds),
        )
    base_runs = [d["metrics"] for d in base_docs.values()]
    best_runs = [d["metrics"] for d in best_docs.values()]
    rows = _base_vs_best(base_runs, best_runs, best.number, several=len(seeds) > 1)
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
    first_doc = next(iter(base_docs.values()), {})
    summary |= {
        "data": first_doc.get("provenance", {}).get("data"),
        "counts": {k: n for k, n in counts.items() if n},
        "best_number": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "seeds": seeds,
        # the means over the seeds that finished (one seed: its metrics); each seed's below
        "base": mean_over_seeds(base_runs) if base_runs else {},
        "best": mean_over_seeds(best_runs) if best_runs else {},
        "base_seeds": {str(s): d["metrics"] for s, d in base_docs.items()},
        "best_seeds": {str(s): d["metrics"] for s, d in best_docs.items()},
        "plots": plots,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    _log_summary(scfg, out_dir, rows, trial_rows, plots)
    print("\n".join(md))


def load_study(scfg, out_dir: Path):
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


def best_params(scfg, best) -> dict:
    """The best trial's parameters, each checked to be one that ``sweep.search_space`` can give: the storage is
    shared with other workers (a database) and these go into a file that is then run, or into runs (never a
    hydra.* key, a ${...} or a path of its own)."""
    space = OmegaConf.to_container(scfg.search_space, resolve=True)
    for k, v in best.params.items():
        if k not in space or not in_space(space[k], v):
            raise DataError(
                f"{scfg.storage}: study {scfg.study_name}, trial {best.number}: parameter {k}={v!r} is not one "
                "of sweep.search_space; refused to write it into an experiment file"
            )
    return dict(best.params)


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
    for k, v in best_params(scfg, best).items():
        OmegaConf.update(exp, k, v, force_add=True)
    exp.task_name = name
    header = [
        "# @package _global_",
        f"# Best trial {best.number} of study {scfg.study_name}: {scfg.metric} = {best.value:.4f}",
        f"#   python -m training hydra.searchpath=[file://{out_dir.resolve()}] experiment={name}",
    ]
    (exp_dir / f"{name}.yaml").write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(exp), encoding="utf-8")
    return name


def _base_vs_best(base_runs: list[dict], best_runs: list[dict], number: int, several: bool) -> list[dict]:
    """One row per headline metric: the base's and the best trial's validation value (one seed: with its 95%
    bootstrap interval over pages; ``several`` seeds: mean ± std [min, max] over those finished) and the
    difference of their means in points."""
    base, best = (
        mean_over_seeds(base_runs) if base_runs else {},
        mean_over_seeds(best_runs) if best_runs else {},
    )
    rows = []
    for k in HEADLINE:
        key = f"val/{k}"
        b, t = base.get(key), best.get(key)
        diff = "" if b is None or t is None else f"{100 * (t - b):+.2f}"
        row = {
            "metric": k,
            "base": fmt_over_seeds(base_runs, key) if base_runs else "n/a",
            f"best trial {number}": fmt_over_seeds(best_runs, key) if best_runs else "n/a",
            "difference (points)": diff,
        }
        if several:
            row["seeds (base / best)"] = f"{len(base_runs)} / {len(best_runs)}"
        rows.append(row)
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
        f"Seeds {', '.join(str(x) for x in scfg.seeds)}: "
        + (
            "mean ± standard deviation (n - 1) [min, max] over the seeds; the difference is between the means."
            if len(scfg.seeds) > 1
            else "one training seed; beside each value its 95% bootstrap interval over pages."
        ),
        "",
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
