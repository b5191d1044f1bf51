"""``python -m training.sweep sweep=NAME``: run an Optuna study (``mode=optimize``), its base run
(``mode=base``) and its summary (``mode=summary``; ``evaluation/sweep_report.py``), or all three (``mode=all``).
The entry point composes the layers: trials train with ``training.train`` and are scored by the shared evaluator."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from evaluation.run import evaluate_run, validator
from evaluation.sweep_report import run_json, summarize
from training.cli import ConfigError, cli
from training.sweep import compose_run, optimize
from training.train import train
from training.workers import pin_device, worker_index


def train_base(scfg, out_dir: Path, run_fn) -> None:
    """The base run: the swept experiment with its default parameters, trained and evaluated like a trial
    (``<out_dir>/base``), unless it is already there. ``mode=base`` (and ``mode=all``) runs it."""
    base_dir = out_dir / "base"
    if not run_json(base_dir).get("metrics"):
        run_fn(compose_run(scfg, [], base_dir, "base"), None)


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
