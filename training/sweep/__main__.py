"""``python -m training.sweep sweep=NAME``: run an Optuna study (``mode=optimize``), the reference runs of its
base-vs-best table (``mode=base``) and its summary (``mode=summary``; ``evaluation/sweep_report.py``), or all three
(``mode=all``). The entry point composes the layers: trials train with ``training.train`` and are scored by the
shared evaluator.

``mode=base`` trains the base (the swept experiment with its default parameters) at every ``sweep.seeds`` and,
when there are several seeds and the study has a completed trial, the best trial's parameters at every seed after
the first (the trial itself trained at the first); each run is skipped when it is already there, so running it
again after more trials trains only the new best trial's seeds."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from evaluation.run import evaluate_run, validator
from evaluation.sweep_report import base_dir, best_params, best_seed_dir, load_study, run_json, summarize
from training.cli import ConfigError, UserError, cli
from training.sweep import as_overrides, check_sweep, compose_run, optimize
from training.train import train
from training.workers import claim, pin_device, release, worker_index

log = logging.getLogger(__name__)


def _train_once(scfg, run_dir: Path, extra: list[str], name: str, run_fn) -> None:
    """One reference run into ``run_dir`` unless it is finished there or another worker holds it."""
    if run_json(run_dir).get("metrics"):
        return
    if not claim(run_dir):
        log.info("%s: another worker is training it", run_dir)
        return
    try:
        resume = (
            ["resume=true"] if (run_dir / "weights").exists() else []
        )  # an interrupted attempt: continue it
        run_fn(compose_run(scfg, [*extra, *resume], run_dir, name), None)
    finally:
        release(run_dir)


def train_base(scfg, out_dir: Path, run_fn) -> None:
    """The reference runs of the base-vs-best table (``mode=base``, and ``mode=all`` after the trials): the swept
    experiment with its default parameters at every ``sweep.seeds`` (``<out_dir>/base/seed_<s>``), then, with
    several seeds and a completed trial, the best trial's parameters at every seed after the first
    (``<out_dir>/best/trial_<n>/seed_<s>``). Runs already there are not redone."""
    check_sweep(scfg)
    seeds = [int(s) for s in scfg.seeds]
    for s in seeds:
        _train_once(scfg, base_dir(out_dir, s), [f"seed={s}"], f"base-seed{s}", run_fn)
    if len(seeds) < 2:
        return
    try:
        study, _, _ = load_study(scfg, out_dir)
    except UserError as e:  # no study or no completed trial yet: the base is all there is to train
        log.info("best trial at seeds %s: not yet (%s)", seeds[1:], e)
        return
    best = study.best_trial
    params = as_overrides(best_params(scfg, best))
    for s in seeds[1:]:
        run_dir = best_seed_dir(out_dir, best.number, s)
        _train_once(scfg, run_dir, [*params, f"seed={s}"], f"best-{best.number}-seed{s}", run_fn)


@cli("sweep")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

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
