"""Artefacts of an evaluation: metrics.json, Markdown and CSV tables, PR and F1-vs-confidence plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from evaluation.metrics import HEADLINE

# (metric, has a 95% interval): the headline metrics with their intervals, then the single numbers
WITHOUT_CI = "conf_at_max_f1 precision_at_conf recall_at_conf f1_at_conf conf_fixed mAP75 AP_small AP_medium AP_large AR100"
# page-level "signed?" decisions at the run's operating point (evaluation/pages.py)
PAGE_ROWS = [("page/precision", True), ("page/recall", True), ("page/f1", True), ("page/conf", False)]
PAGE_ROWS += [
    (f"page/{n}", False) for n in ["n_pages", "n_signed", "n_called_signed", "n_signed_without_box"]
]
ROWS = [(n, True) for n in HEADLINE] + [(n, False) for n in WITHOUT_CI.split()] + PAGE_ROWS


def fmt_num(v, digits: int = 4, missing: str = "n/a") -> str:
    """A number for a table: ``digits`` decimals; ``missing`` for None, NaN and infinities."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return missing
    return f"{float(v):.{digits}f}"


def fmt_ci(metrics: dict, key: str, prefix: str = "", missing: str = "n/a", digits: int = 4) -> str:
    """``prefix[low, high]``: the 95% interval of ``key`` (``key_ci_low`` / ``key_ci_high``); "" without one."""
    lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return "" if lo is None else f"{prefix}[{fmt_num(lo, digits, missing)}, {fmt_num(hi, digits, missing)}]"


def spread(values) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1; NaN for one value), min, max and count of the finite ``values``
    (a metric over training seeds); all NaN (count 0) when there is none."""
    arr = np.asarray([float(v) for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if not arr.size:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else float("nan")
    return {
        "mean": float(arr.mean()),
        "std": std,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": arr.size,
    }


def mean_over_seeds(runs: list[dict]) -> dict:
    """One metrics dict for the metrics dicts of one setting's seeds: with one run its metrics as they are, with
    several the mean of every metric (without the page intervals: one seed's intervals do not average)."""
    if len(runs) == 1:
        return dict(runs[0])
    keys = [k for k in runs[0] if "_ci_" not in k]
    return {k: spread([r.get(k) for r in runs])["mean"] for k in keys}


def fmt_spread(stats: dict, digits: int = 4, missing: str = "n/a") -> str:
    """``mean ± std [min, max]`` of a :func:`spread`; its value alone when it holds one number."""
    if not stats.get("n"):
        return missing
    if stats["n"] == 1:
        return fmt_num(stats["mean"], digits, missing)
    return (
        f"{fmt_num(stats['mean'], digits)} ± {fmt_num(stats['std'], digits)} "
        f"[{fmt_num(stats['min'], digits)}, {fmt_num(stats['max'], digits)}]"
    )


def fmt_over_seeds(runs: list[dict], key: str, digits: int = 4, missing: str = "n/a") -> str:
    """``key`` over the metrics dicts of one model's runs, one per training seed: with one run its value and 95%
    bootstrap interval over pages (``v [lo, hi]``), with several ``mean ± std [min, max]`` over the seeds."""
    values = [r.get(key) for r in runs]
    if len(runs) == 1:
        v = values[0]
        return fmt_num(v, digits, missing) + (
            fmt_ci(runs[0], key, " ", missing, digits) if v is not None else ""
        )
    return fmt_spread(spread(values), digits, missing)


def table_rows(metrics: dict[str, float], splits: list[str]) -> list[dict[str, str]]:
    """One row per metric, a value and a 95% interval column per split; ultralytics' metrics last, prefixed."""
    extra = sorted(
        {k.split("/", 2)[2] for k in metrics if k.startswith("ultralytics/") and k.split("/")[1] in splits}
    )
    names = ROWS + [(f"ultralytics/{n}", False) for n in extra]
    rows = []
    for name, has_ci in names:
        bare = name.removeprefix("ultralytics/")
        keys = {s: f"ultralytics/{s}/{bare}" if bare != name else f"{s}/{name}" for s in splits}
        if not any(k in metrics for k in keys.values()):
            continue
        row = {"metric": name}
        for split, k in keys.items():
            row[split] = fmt_num(metrics.get(k)) if k in metrics else ""
            row[f"{split} 95% CI"] = fmt_ci(metrics, k) if has_ci else ""
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, str]], header: str = "") -> str:
    cols = list(rows[0]) if rows else ["metric"]
    lines = [header] if header else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["metric"])
        w.writeheader()
        w.writerows(rows)
    return path


def write_tables(
    run_dir: Path, metrics: dict[str, float], splits: list[str], provenance: str
) -> tuple[Path, list[dict[str, str]]]:
    """metrics.md and metrics.csv of :func:`table_rows`; returns the Markdown file and the rows."""
    rows = table_rows(metrics, splits)
    md = run_dir / "metrics.md"
    md.write_text(markdown_table(rows, f"# Metrics\n\n{provenance}\n"), encoding="utf-8")
    write_csv(run_dir / "metrics.csv", rows)
    return md, rows


def write_metrics_json(run_dir: Path, metrics: dict[str, float], extra: dict | None = None) -> Path:
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in sorted(metrics.items())}
    path = run_dir / "metrics.json"
    path.write_text(json.dumps({"metrics": clean, **(extra or {})}, indent=2), encoding="utf-8")
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(n: int, width: float, height: float):
    """A figure for ``n`` images, up to 3 columns of ``width`` x ``height`` inches, axes off; (fig, axes.flat)."""
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def save_figure(fig, path: Path, grid=None) -> Path:
    """Grid (on the axes ``grid``, when given), tight layout, write, close: the finish of every plot here."""
    import matplotlib.pyplot as plt

    if grid is not None:
        grid.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(
    run_dir: Path, split: str, curves: dict[str, np.ndarray], metrics: dict[str, float]
) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.plot(curves["recall"], curves["precision"], lw=1.5)
    title = f"{split}: PR at IoU 0.5 (mAP50 {metrics.get(f'{split}/mAP50', float('nan')):.3f})"
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    pr = save_figure(fig, run_dir / f"pr_curve_{split}.png", ax)

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for k in ("f1", "precision", "recall"):
        ax.plot(curves["conf"], curves[k], lw=1.5 if k == "f1" else 1.0, label=k)
    c = metrics.get(f"{split}/conf_at_max_f1")
    if c is not None:
        ax.axvline(c, color="grey", ls="--", lw=1, label=f"max F1 @ {c:.3f}")
    ax.set(
        xlabel="confidence", ylabel="value", xlim=(0, 1), ylim=(0, 1.02), title=f"{split}: F1 vs confidence"
    )
    ax.legend(loc="best", fontsize=8)
    return [pr, save_figure(fig, run_dir / f"f1_conf_{split}.png", ax)]


def plot_pages(
    run_dir: Path, split_name: str, split, preds: dict, metrics: dict[str, float], n: int = 6
) -> Path | None:
    """``pages_<split>.png``: the first ``n`` pages with true boxes (green) and the predictions kept at the
    max-F1 confidence (red, with scores): what the model does, beside the curves that summarise it."""
    if n <= 0 or not split.images:
        return None
    from matplotlib.patches import Rectangle

    from training.data.images import load_rgb

    conf = metrics.get(f"{split_name}/conf_at_max_f1", 0.25)
    images = split.images[:n]
    fig, axes = image_grid(len(images), 4, 4)
    for ax, im in zip(axes, images, strict=False):
        ax.imshow(load_rgb(im.file))
        for a in split.annotations_for(im.id):
            x, y, w, h = a.bbox
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec="limegreen", lw=2))
        det = preds.get(im.id)
        if det is not None:
            for (x0, y0, x1, y1), s in zip(det.boxes, det.scores, strict=True):
                if s >= conf:
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.2))
                    ax.text(x0, y0 - 2, f"{s:.2f}", color="red", fontsize=7)
        ax.set_title(Path(im.file).name[:40], fontsize=7)
    fig.suptitle(f"{split_name}: true boxes (green), predictions at conf >= {conf:.2f} (red)", fontsize=9)
    return save_figure(fig, run_dir / f"pages_{split_name}.png")
