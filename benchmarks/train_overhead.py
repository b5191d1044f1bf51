"""Training throughput of `python -m training` vs plain `ultralytics` with the same settings on the same data.

    python benchmarks/train_overhead.py --epochs 5 --imgsz 320 --repeats 2

Both sides run in fresh subprocesses, alternating order, and time only the `.train()` call (images/s =
epochs x train images / seconds). The framework's total wall time (data checks, cache, evaluation) is
printed too. Prints a Markdown table; numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]

PLAIN = r"""
import json, sys, time
from ultralytics import YOLO
args = json.loads(sys.argv[1])
model = YOLO(args.pop("arch"))
t = time.perf_counter()
model.train(**args)
print("TRAIN_SECONDS", time.perf_counter() - t)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="quickstart")
    ap.add_argument(
        "--model", default=None, help="a conf/model name, e.g. --experiment upstream --model yolov8s"
    )
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    import training  # noqa: F401
    from training.data import load_dataset, prepare_yolo

    setting = [f"experiment={a.experiment}", *([f"model={a.model}"] if a.model else [])]
    overrides = [*setting, f"train.epochs={a.epochs}", f"train.imgsz={a.imgsz}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=overrides)
    tmp = Path(tempfile.mkdtemp(prefix="sigdet-bench-"))
    env = dict(os.environ, SIGDET_CACHE_DIR=str(tmp / "cache"), YOLO_OFFLINE="1")
    with open_dict(cfg):
        cfg.data.cache_dir = str(tmp / "cache")
    ds = load_dataset(cfg.data, ("train", "val"))
    data_yaml = prepare_yolo(ds, Path(cfg.data.cache_dir))
    n_train = len(ds["train"].images)
    train_args = OmegaConf.to_container(cfg.train, resolve=True)

    run = functools.partial(subprocess.run, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    ours_cmd = [sys.executable, "-m", "training", *overrides, "evaluation.n_bootstrap=1000"]
    ours, plain, ours_wall = [], [], []
    for r in range(a.repeats):
        for side in ("plain", "ours") if r % 2 == 0 else ("ours", "plain"):
            if side == "plain":
                args = dict(train_args, arch=cfg.model.arch, data=str(data_yaml), project=str(tmp / "plain"))
                out = run([sys.executable, "-c", PLAIN, json.dumps(dict(args, name=f"r{r}", exist_ok=True))])
                secs = float(
                    next(ln for ln in out.stdout.splitlines() if ln.startswith("TRAIN_SECONDS")).split()[1]
                )
                plain.append(a.epochs * n_train / secs)
            else:
                run_dir = tmp / "ours" / f"r{r}"
                t = time.perf_counter()
                run([*ours_cmd, f"hydra.run.dir={run_dir}"])
                ours_wall.append(time.perf_counter() - t)
                m = json.loads((run_dir / "metrics.json").read_text())["metrics"]
                ours.append(m["train/images_per_s"])
            print(
                f"repeat {r} {side}: {(plain if side == 'plain' else ours)[-1]:.2f} images/s", file=sys.stderr
            )

    po, pp = statistics.median(ours), statistics.median(plain)
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {' '.join(setting)} "
        f"epochs={a.epochs} imgsz={a.imgsz} batch={train_args['batch']}, {n_train} train images, {a.repeats} repeats (median)\n"
    )
    print("| side | train images/s | runs |\n|---|---|---|")
    print(f"| plain ultralytics `YOLO(...).train(...)` | {pp:.2f} | {', '.join(f'{v:.2f}' for v in plain)} |")
    print(f"| `python -m training` | {po:.2f} | {', '.join(f'{v:.2f}' for v in ours)} |")
    print(f"\nratio ours/plain: {po / pp:.3f} (overhead {100 * (1 - po / pp):+.1f}%)")
    print(
        f"`python -m training` total wall (train + evaluation of val and test): median {statistics.median(ours_wall):.1f} s"
    )


if __name__ == "__main__":
    main()
