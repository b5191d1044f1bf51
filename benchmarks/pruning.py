"""Epochs spent and best value found with pruning vs without: same sampler seed, same number of trials.

    python benchmarks/pruning.py --trials 20 --epochs 30 --seeds 0 1 2

Synthetic learning curves through the real sweep machinery (``training.sweep.optimize``, the upstream search
space, PruningTracker, Optuna's pruners): a trial's F1 after epoch e is ``a(params) * (1 - exp(-e / tau)) +
noise``, with the asymptote ``a`` peaking at lr0 ~ 1e-3 with AdamW and mild effects of box / cls (dropout inert,
as in ultralytics detection). Only the pruner differs between the two arms.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]


def asymptote(t) -> float:
    lr = float(t.lr0)
    a = 0.9 - 0.08 * (math.log10(lr) + 3) ** 2  # best at 1e-3
    a -= 0.05 if t.optimizer == "RMSProp" else 0.0
    a -= 0.01 * abs(float(t.box) - 6) + 0.02 * abs(float(t.cls) - 0.9)
    return max(a, 0.02)


def run_arm(pruner: str, trials: int, epochs: int, seed: int) -> tuple[float, int]:
    import optuna

    from training.sweep import optimize
    from training.tracking import Tracker

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spent = {"epochs": 0}
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("sweep", overrides=["sweep=yolov8s_optuna", f"seed={seed}"])
        tmp = Path(tempfile.mkdtemp(prefix="sigdet-prune-"))
        with open_dict(cfg):
            s = cfg.sweep
            s.storage = f"sqlite:///{tmp}/study.db"
            s.study_name = f"{pruner}-{seed}"
            s.n_trials = trials
            s.pruner.name = pruner  # the sweep's own pruner settings otherwise
            s.overrides = {}

        def fake_run(train_cfg, wrap):
            rng = np.random.default_rng(hash((seed, float(train_cfg.train.lr0))) % 2**32)
            tracker = wrap(Tracker())
            a, tau, value = asymptote(train_cfg.train), 6.0, 0.0
            for e in range(1, epochs + 1):
                spent["epochs"] += 1
                value = a * (1 - math.exp(-e / tau)) + rng.normal(0, 0.01)
                tracker.log_metrics({"ultralytics/f1": value}, step=e)
            return {"val/f1": value}

        study = optimize(s, tmp, fake_run)
    return study.best_value, spent["epochs"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pruners", nargs="+", default=["median", "hyperband"])
    a = ap.parse_args()
    print(f"Synthetic curves, {a.trials} trials x up to {a.epochs} epochs, TPE, upstream search space\n")
    print(
        "| pruner | seed | best F1, no pruning | best F1, pruned arm | difference (points) | epochs, no pruning | epochs, pruned arm | epochs saved |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = {seed: run_arm("none", a.trials, a.epochs, seed) for seed in a.seeds}
    for pruner in a.pruners:
        saved, diffs = [], []
        for seed in a.seeds:
            (b0, e0), (b1, e1) = base[seed], run_arm(pruner, a.trials, a.epochs, seed)
            saved.append(1 - e1 / e0)
            diffs.append(100 * (b1 - b0))
            print(
                f"| {pruner} | {seed} | {b0:.4f} | {b1:.4f} | {100 * (b1 - b0):+.2f} | {e0} | {e1} | {100 * (1 - e1 / e0):.0f}% |"
            )
        print(f"| {pruner} | mean | | | {np.mean(diffs):+.2f} | | | {100 * np.mean(saved):.0f}% |")


if __name__ == "__main__":
    main()
