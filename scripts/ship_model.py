"""Ship a trained real-page detector in the package, with a card written from its runs (nothing typed by hand).

    python scripts/ship_model.py --train <training run> --eval <evaluation run of its best.pt>

The training run is a finished ``python -m training`` run (``weights/best.pt``, ``config.yaml``, ``metrics.json``);
the evaluation run is ``python -m evaluation checkpoint=<train>/weights/best.pt evaluation.splits=[val,test]``,
whose ``metrics.json`` holds the box and page-level metrics with their intervals and the operating point chosen on
valid. Writes into training/assets/pretrained/:

- ``<name>.pt``: the checkpoint (at most 10 MB);
- ``<name>.json``: the operating point that ``predict`` and ``sigdet.load()`` use by default, and the headline metrics;
- ``<name>.md``: the card (commands, commit, seed, data and licences, machine, time, metrics, limits, sha256);

and the same card as docs/shipped-model.md for the docs site. Refuses to overwrite unless --force is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from ship_pretrained import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "training" / "assets" / "pretrained"
MAX_BYTES = 10 * 1024 * 1024


def read_run(run: Path, *need: str) -> tuple[dict, dict, list[str]]:
    """A run's config.yaml, metrics.json and the overrides it was started with; exits naming a missing file."""
    for name in ("config.yaml", "metrics.json", *need):
        if not (run / name).exists():
            sys.exit(f"error: {run / name} not found (a finished run?)")
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    over = run / ".hydra" / "overrides.yaml"
    args = yaml.safe_load(over.read_text(encoding="utf-8")) if over.is_file() else []
    return cfg, metrics, [a for a in args if not a.startswith("hydra.run.dir=")]


def fmt(m: dict, key: str) -> str:
    v = m.get(key)
    if v is None:
        return "n/a"
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def portable(arg: str) -> str:
    """An override as a reader can use it: a data.yaml path on this machine as ``<its folder name>/data.yaml``."""
    key, _, value = arg.partition("=")
    if key == "data.yaml" and value.startswith("/"):
        return f"{key}=<{Path(value).parent.name}>/data.yaml"
    return arg


def roboflow_source(data_cfg: dict) -> dict:
    """The ``roboflow:`` block of a Roboflow export's data.yaml (workspace, project, version, licence, url)."""
    path = data_cfg.get("yaml")
    if not path or not Path(path).is_file():
        return {}
    return (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("roboflow") or {}


def train_pages(data_cfg: dict) -> int:
    """How many training pages the run read (its data config, loaded as training loaded it)."""
    from omegaconf import OmegaConf

    import training  # noqa: F401  (registers the config resolvers)
    from training.data import load_dataset

    return len(load_dataset(OmegaConf.create(data_cfg), ["train"])["train"].images)


def metric_rows(m: dict, splits: list[str]) -> str:
    rows = [
        ("box mAP50", "mAP50"),
        ("box mAP50-95", "mAP50-95"),
        ("box precision / recall / F1 at max-F1 conf", None),
        ("**page precision** (signed? at the operating point)", "page/precision"),
        ("**page recall**", "page/recall"),
        ("page F1", "page/f1"),
        ("pages / signed / called signed / signed without any box", None),
    ]
    out = ["| | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for label, key in rows:
        cells = []
        for s in splits:
            if key:
                cells.append(fmt(m, f"{s}/{key}"))
            elif label.startswith("box precision"):
                cells.append(
                    " / ".join(
                        f"{m.get(f'{s}/{k}', float('nan')):.3f}" for k in ("precision", "recall", "f1")
                    )
                )
            else:
                counts = ("n_pages", "n_signed", "n_called_signed", "n_signed_without_box")
                cells.append(" / ".join(str(int(m.get(f"{s}/page/{k}", 0))) for k in counts))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="the finished training run")
    ap.add_argument("--eval", required=True, help="the evaluation run of its weights/best.pt")
    ap.add_argument("--name", default="signatures-yolov8n")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--train-commit", help="the commit the training ran at (default: HEAD)")
    ap.add_argument("--eval-commit", help="the commit the evaluation ran at (default: HEAD)")
    args = ap.parse_args()
    train, ev = Path(args.train), Path(args.eval)
    tcfg, tmetrics, targs = read_run(train, "weights/best.pt")
    ecfg, emetrics, eargs = read_run(ev)
    op = emetrics.get("operating_point")
    if not op or op.get("conf") is None:
        sys.exit(f"error: {ev / 'metrics.json'} has no operating point (evaluate with val among the splits)")
    best = train / "weights" / "best.pt"
    if best.stat().st_size > MAX_BYTES:
        sys.exit(f"error: {best} is {best.stat().st_size / 2**20:.1f} MB, above the 10 MB the package allows")
    target = DEST / f"{args.name}.pt"
    if target.exists() and not args.force:
        sys.exit(f"error: {target} exists; add --force to replace it")

    shutil.copyfile(best, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    train_commit, eval_commit = args.train_commit or commit, args.eval_commit or commit
    m, tm = emetrics["metrics"], tmetrics["metrics"]
    n_train = train_pages(tcfg["data"])
    splits = [s for s in ("val", "test") if f"{s}/mAP50" in m]
    t, data, model = tcfg["train"], tcfg["data"], tcfg["model"]
    headline = {
        k: v
        for k, v in m.items()
        if k.split("/", 1)[-1]
        in (
            "mAP50",
            "mAP50-95",
            "mAP50_ci_low",
            "mAP50_ci_high",
            "page/precision",
            "page/recall",
            "page/f1",
            "page/precision_ci_low",
            "page/precision_ci_high",
            "page/recall_ci_low",
            "page/recall_ci_high",
        )
    }
    op_out = {k: v for k, v in op.items() if k != "from"}
    sidecar = {"operating_point": op_out, "metrics": headline, "card": f"{args.name}.md", "sha256": digest}
    (DEST / f"{args.name}.json").write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")

    train_cmd = "python -m training " + " ".join(map(portable, targs))
    eval_cmd = "python -m evaluation " + " ".join(
        portable(a) if not a.startswith("checkpoint=") else "checkpoint=<training run>/weights/best.pt"
        for a in eargs
    )
    rf = roboflow_source(tcfg["data"])
    prov = emetrics.get("provenance", {})
    reached = "reached" if op.get("reached") else "NOT reached (the lowest score with a box is used)"
    card = f"""# {args.name}.pt: a YOLOv8n that finds handwritten signatures on real document pages

The detector `sigdet predict` and `sigdet.load()` use when no checkpoint is given. Made by this framework's own
commands (below) and this card by `scripts/ship_model.py` from the runs' files; shipped at commit
{commit or "unknown"}.

## How it was made

```bash
{train_cmd}    # at commit {train_commit}
{eval_cmd}    # at commit {eval_commit}
```

- **data**: Roboflow Universe project *{rf.get("project", data.get("name"))}* v{rf.get("version", "?")} ({rf.get("workspace", "?")}
  workspace), licence **{rf.get("license", "see the dataset")}**: {n_train} train pages for training;
  {int(m.get("val/n_images", 0))} valid pages for the checkpoint choice and the operating point; {int(m.get("test/n_images", 0))} test pages,
  used only for the figures below (no test page was seen in training or in any choice). Attribution:
  {rf.get("project", "?")}, {rf.get("workspace", "?")} on Roboflow Universe (<{rf.get("url", "?")}>), {rf.get("license", "?")}.
- **start**: `{Path(str(model.get("weights") or "random init")).name}` (the package's YOLOv8n pretrained on synthetic pages
  only: `yolov8n-synthetic.md`); no COCO or other downloaded weights.
- **model code**: ultralytics YOLOv8n ({model.get("arch") or "yolov8n.yaml"}), AGPL-3.0; this framework Apache-2.0.
- **training**: the `{tcfg.get("task_name")}` recipe: {int(tm.get("train/epochs", 0))} epochs at {t["imgsz"]} px, batch {t["batch"]},
  {t["optimizer"]} lr0 {t["lr0"]}, amp {t.get("amp")}, recipe {tcfg["recipe"]["name"]} (copy-paste p
  {(tcfg["recipe"].get("copy_paste") or {}).get("p", "off")}), seed {tcfg["seed"]}; best epoch chosen on valid.
- **machine and time**: {tm.get("train/time_s", 0) / 60:.1f} min of training on {cpu_name()} ({os.cpu_count()} cores);
  evaluation on {prov.get("hardware", "?")} ({prov.get("device", "?")}), torch {prov.get("torch", "?")}.
- **data config**: `{data.get("name")}` ({data.get("format")}).

## Operating point

A page is called signed when its best box scores at least **conf = {op["conf"]:.4f}**: the highest confidence at
which {op.get("target_recall")} of the signed **valid** pages are found (`evaluation.page.target_recall`; target
{reached}; recall on valid {op.get("recall_on_split") or float("nan"):.3f}). Stored in `{args.name}.json`; `conf=` overrides it.

## Metrics

95% bootstrap intervals over pages in brackets (1,000 resamples). A page is *signed* when it has at least one true
box; page precision and recall are at the operating point above.

{metric_rows(m, splits)}

## Known limits

- Trained on {n_train} pages of one public dataset: pages from other sources (other scanners, cameras, languages,
  forms, handwriting styles) may score lower; the page recall on such pages is not measured here. Check it on a sample of
  your own pages with `sigdet evaluate` before trusting it, and train your own when it falls short.
- Small input (320 px): very small signatures (initials, a signature on a full-page A4 scan at low resolution) can
  be missed; pages are letterboxed to 320 px whatever their size.
- The test split has only {int(m.get("test/n_images", 0))} pages: its intervals are wide.
- It finds signatures, not stamps, initials or printed names (initials were mostly unlabelled in the data).
- Unsigned pages in the valid split are few ({int(m.get("val/page/n_pages", 0)) - int(m.get("val/page/n_signed", 0))}), so the
  page precision at the operating point is measured on few negatives.

## File

- `{args.name}.pt`: {target.stat().st_size / 2**20:.1f} MB, sha256 `{digest}`
"""
    (DEST / f"{args.name}.md").write_text(card, encoding="utf-8")
    (ROOT / "docs" / "shipped-model.md").write_text(card, encoding="utf-8")
    print(card)


if __name__ == "__main__":
    main()
