"""Copy a synthetic-pretraining run's best.pt into the package, with a card saying how it was made.

    python scripts/ship_pretrained.py outputs/synthetic_pretrain/<run>
    python scripts/ship_pretrained.py <run 2> --parent <run 1>   # run 2 started from run 1's best.pt

Writes training/assets/pretrained/yolov8n-synthetic.pt and yolov8n-synthetic.md (per run: its command line
from .hydra/overrides.yaml, seed, pages, training time, valid metrics on synthetic pages, CPU; the sha256).
Refuses to overwrite a shipped checkpoint unless --force is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "training" / "assets" / "pretrained"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def run_files(run: Path) -> tuple[dict, dict]:
    """A finished run's config.yaml and metrics.json metrics; exits naming the file that is missing."""
    best, cfg_path, metrics_path = run / "weights" / "best.pt", run / "config.yaml", run / "metrics.json"
    for p in (best, cfg_path, metrics_path):
        if not p.is_file():
            sys.exit(
                f"error: {p} not found (a finished python -m training experiment=synthetic_pretrain run?)"
            )
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    return cfg, json.loads(metrics_path.read_text(encoding="utf-8"))["metrics"]


def run_lines(run: Path, cfg: dict, m: dict) -> str:
    """How one run was made, as the card's bullet lines."""
    overrides = run / ".hydra" / "overrides.yaml"
    args = yaml.safe_load(overrides.read_text(encoding="utf-8")) if overrides.is_file() else None
    command = "python -m training " + " ".join(args or ["experiment=synthetic_pretrain"])
    syn, train = cfg["data"]["synthetic"], cfg["train"]
    return f"""- command: `{command}`
- pages: {syn["pages"]} (seed {syn["seed"]}; page i of a split depends only on (seed, i)), page settings {syn.get("page") or "default"}
- recipe: {cfg["recipe"]["name"]} (copy-paste {"off" if not cfg["recipe"].get("copy_paste") else "on"})
- training: {int(m["train/epochs"])} epochs at {train["imgsz"]} px, batch {train["batch"]}, {train["optimizer"]} lr0 {train["lr0"]}, amp {train.get("amp")}, seed {cfg["seed"]}, starting from {cfg["model"].get("weights") or "random init"}
- time: {m["train/time_s"] / 60:.1f} min training on {cpu_name()} ({os.cpu_count()} cores)
- valid (synthetic pages) mAP50 {m.get("val/mAP50", float("nan")):.3f}, mAP50-95 {m.get("val/mAP50-95", float("nan")):.3f}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--parent", help="the run whose best.pt run_dir started from (model.weights)")
    ap.add_argument("--name", default="yolov8n-synthetic")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    run = Path(args.run_dir)
    cfg, m = run_files(run)
    stages = [(run, cfg, m)]
    if args.parent:
        parent = Path(args.parent)
        stages.insert(0, (parent, *run_files(parent)))
    elif cfg["model"].get("weights"):
        sys.exit(
            f"error: {run} started from {cfg['model']['weights']}; name the run that made it with --parent"
        )
    target = DEST / f"{args.name}.pt"
    if target.exists() and not args.force:
        sys.exit(f"error: {target} exists; add --force to replace it")
    DEST.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "weights" / "best.pt", target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    blocks = "\n".join(
        (f"Run {i} of {len(stages)}:\n" if len(stages) > 1 else "") + run_lines(*stage)
        for i, stage in enumerate(stages, 1)
    )
    card = f"""# {args.name}.pt: YOLOv8n pretrained on synthetic document pages only

No real page and no downloaded weight went into it: random init, then training on pages from
`training/data/synthetic.py` (generator version in the data cache key). Any ultralytics experiment can start
from it: `model.weights=${{asset:pretrained/{args.name}.pt}}` (the quickstart does). Shipped at commit
{commit or "unknown"}.

{blocks}
- sha256: {digest}
"""
    (DEST / f"{args.name}.md").write_text(card, encoding="utf-8")
    print(card)


if __name__ == "__main__":
    main()
