"""Recipe ablation: plain ultralytics vs the framework's document recipe with each component switched off.

Every row trains a YOLOv8n from scratch for the same wall budget (ultralytics' ``time`` argument: it re-plans
its epochs and schedule after the first epoch to fit) at the same seeds on the same data, and every row is scored
by the framework's own evaluator (python -m evaluation) on valid and test. With one seed each cell is the value
and its 95% bootstrap interval over pages; with several (``--seeds 0,1,2``: every row trained once per seed) it is
mean ± standard deviation (n - 1) [min, max] over the seeds, the spread that decides whether a row's gain is more
than the seed's.

    python benchmarks/recipe_ablation.py --yaml ../shared/data/signatures-xc8up/data.yaml --minutes 26 \
        --pretrained outputs/synthetic_pretrain/<run>/weights/best.pt --out outputs/ablation --seeds 0,1,2

Runs go one after the other (the machine has 2 cores: never two trainings at once), each into
``<out>/<row>/seed_<s>/``; a (row, seed) whose ``row.json`` exists is read, not re-run, so the script can be
resumed or extended (``--rows``, ``--seeds``). Prints a markdown table and writes it to <out>/ablation.md. Choices
are made on valid; test is reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.report import fmt_over_seeds, spread  # noqa: E402  (after the path of the checkout)

# name -> (description, overrides of `python -m training experiment=signatures_cpu`); None: plain ultralytics
ROWS: dict[str, tuple[str, list[str] | None]] = {
    "ultralytics": ("plain YOLO('yolov8n.yaml').train(), its defaults, 416 px", None),
    "defaults": (
        "framework, recipe=none, random init, 416 px (its plain defaults)",
        ["recipe=none", "model.weights=null", "train.imgsz=416"],
    ),
    "recipe": ("signatures_cpu as it is: scan effects + synthetic init, 320 px, no copy-paste", []),
    "with_paste": ("the recipe plus copy-paste (conf/recipe/document.yaml's p)", ["recipe.copy_paste.p=0.5"]),
    "no_scan": ("recipe without scan effects", ["recipe.scan=null"]),
    "no_pretrain": ("recipe without synthetic pretraining (random init)", ["model.weights=null"]),
    "imgsz_416": ("recipe at 416 px instead of 320", ["train.imgsz=416"]),
    # on a CPU without native BF16 the config already trains in FP32 and this row repeats recipe
    "fp32": ("the recipe trained in FP32 instead of BF16 autocast", ["train.amp=false"]),
}


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc != 0:
        sys.exit(f"error: {' '.join(cmd[:4])} ... failed with exit code {rc}; see {log}")
    return time.perf_counter() - t0


def _data_args(args) -> list[str]:
    return ["data=yolo_folder", f"data.yaml={Path(args.yaml).resolve()}"]


def plain_ultralytics(args, run_dir: Path, seed: int) -> dict:
    """ultralytics as a user would run it, then our evaluator on its best.pt."""
    from hydra import compose, initialize_config_dir

    import training  # noqa: F401  (registers the config resolvers)
    from training.data import cache_root, load_dataset, prepare_yolo

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=_data_args(args))
    data_yaml = prepare_yolo(load_dataset(cfg.data, ("train", "val")), cache_root(cfg.data))
    code = (
        "from ultralytics import YOLO; "
        f"YOLO('yolov8n.yaml').train(data={str(data_yaml)!r}, epochs=1000, time={args.minutes / 60!r}, imgsz=416, "
        f"batch=16, seed={seed}, workers=2, project={str(run_dir.resolve())!r}, name='ultralytics', exist_ok=True)"
    )
    wall = _run([sys.executable, "-c", code], run_dir / "train.log")
    best = run_dir / "ultralytics" / "weights" / "best.pt"
    cmd = [sys.executable, "-m", "evaluation", f"checkpoint={best}", *_data_args(args)]
    cmd += ["train.imgsz=416", "evaluation.splits=[val,test]", f"hydra.run.dir={run_dir / 'eval'}"]
    _run(cmd, run_dir / "eval.log")
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))["metrics"]
    train_csv = run_dir / "ultralytics" / "results.csv"
    metrics["train/epochs"] = float(len(train_csv.read_text(encoding="utf-8").strip().splitlines()) - 1)
    metrics["wall_s"] = wall
    return metrics


def framework(args, run_dir: Path, overrides: list[str], seed: int) -> dict:
    # --pretrained replaces the experiment's starting point (the shipped checkpoint) unless the row sets its own
    init = []
    if args.pretrained and not any(o.startswith("model.weights=") for o in overrides):
        init = [f"model.weights={Path(args.pretrained).resolve()}"]
    cmd = [sys.executable, "-m", "training", "experiment=signatures_cpu", *_data_args(args), *init]
    cmd += [f"++train.time={args.minutes / 60}", "train.epochs=1000", f"seed={seed}", *overrides]
    wall = _run([*cmd, f"hydra.run.dir={run_dir / 'run'}"], run_dir / "train.log")
    metrics = json.loads((run_dir / "run" / "metrics.json").read_text(encoding="utf-8"))["metrics"]
    metrics["wall_s"] = wall
    return metrics


def _epochs(runs: list[dict]) -> str:
    """Epochs the time budget gave: one number, or the range over the seeds."""
    st = spread([m.get("train/epochs") for m in runs])
    if not st["n"]:
        return "-"
    lo, hi = int(st["min"]), int(st["max"])
    return str(lo) if lo == hi else f"{lo}-{hi}"


def table(results: dict[str, list[dict]], header: str) -> str:
    """The Markdown table: per row, the metrics of its seeds (one seed: value [95% CI]; several: mean ± std
    [min, max])."""
    lines = [
        header,
        "",
        "| row | what | seeds | epochs | valid mAP50 | valid mAP50-95 | valid F1 | test mAP50 | test mAP50-95 | test F1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        cells = [
            fmt_over_seeds(runs, f"{s}/{k}", 3, "-")
            for s in ("val", "test")
            for k in ("mAP50", "mAP50-95", "f1")
        ]
        lines.append(
            f"| {name} | {ROWS[name][0]} | {len(runs)} | {_epochs(runs)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def parse_seeds(text: str) -> list[int]:
    seeds = [int(x) for x in text.split(",") if x.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: distinct integers, comma-separated")
    return seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--yaml", required=True, help="data.yaml of the YOLO-format signatures-xc8up export")
    ap.add_argument("--minutes", type=float, default=26.0, help="training wall budget per row and seed")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds; every row trains at each")
    ap.add_argument(
        "--pretrained",
        help="the synthetic-pretraining checkpoint (python -m training experiment=synthetic_pretrain)",
    )
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {list(ROWS)}")
    ap.add_argument("--out", default="outputs/ablation")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"error: unknown rows {unknown}; valid: {list(ROWS)}")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if not Path(args.yaml).is_file():
        sys.exit(f"error: {args.yaml}: no such data.yaml")
    out = Path(args.out)
    results: dict[str, list[dict]] = {}
    for name in rows:
        for seed in seeds:
            run_dir = out / name / f"seed_{seed}"
            done = run_dir / "row.json"
            if done.is_file():
                row = json.loads(done.read_text(encoding="utf-8"))
                results.setdefault(name, []).append(row.get("metrics", row))
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"{name} (seed {seed}): {ROWS[name][0]} ...", flush=True)
            overrides = ROWS[name][1]
            if overrides is None:
                m = plain_ultralytics(args, run_dir, seed)
            else:
                m = framework(args, run_dir, overrides, seed)
            done.write_text(json.dumps(m, indent=1), encoding="utf-8")
            results.setdefault(name, []).append(m)
    header = (
        f"Recipe ablation: YOLOv8n from scratch, {args.minutes:g} min training budget per row and seed, "
        f"seeds {', '.join(map(str, seeds))}, data {args.yaml}"
        + (f", synthetic init {args.pretrained}" if args.pretrained else "")
        + (
            ". Cells: mean ± std (n - 1) [min, max] over the seeds."
            if len(seeds) > 1
            else ". Cells: value [95% bootstrap interval over pages]."
        )
    )
    text = table(results, header)
    print(text)
    (out / "ablation.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
