"""Classifier metrics and the artefacts of a classifier run.

Definitions (the region classifier's counterpart of evaluation/metrics.py):

- ``accuracy``: correct / all crops. ``macro_f1``: unweighted mean of the per-class F1 over the classes that
  occur in the split or are predicted (a class absent from both is left out rather than counted as 0 or 1).
- per class ``c``: ``precision/c`` = TP / predicted c, ``recall/c`` = TP / true c, ``f1/c`` their harmonic mean
  (0 when undefined), ``support/c`` = number of true c.
- ``accuracy`` and ``macro_f1`` carry 95% bootstrap intervals over crops (``_ci_low`` / ``_ci_high``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from evaluation.report import fmt_ci, fmt_num, markdown_table, write_csv, write_metrics_json

log = logging.getLogger(__name__)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """``cm[i, j]`` = crops of true class i predicted as j."""
    cm = np.zeros((n, n), int)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(float)
    pred, true = cm.sum(0).astype(float), cm.sum(1).astype(float)
    p = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    r = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
    return p, r, f


def _macro_f1(cm: np.ndarray) -> float:
    present = (cm.sum(0) + cm.sum(1)) > 0
    if not present.any():
        return float("nan")
    return float(_per_class(cm)[2][present].mean())


def classification_metrics(
    y_true, y_pred, classes: list[str], n_bootstrap: int = 0, seed: int = 0
) -> dict[str, float]:
    """Accuracy, macro F1 (with bootstrap intervals when ``n_bootstrap > 0``) and per-class P / R / F1."""
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    n = len(classes)
    cm = confusion(y_true, y_pred, n)
    m: dict[str, float] = {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
        "macro_f1": _macro_f1(cm),
        "n": float(len(y_true)),
    }
    p, r, f = _per_class(cm)
    for i, c in enumerate(classes):
        m[f"precision/{c}"], m[f"recall/{c}"], m[f"f1/{c}"] = float(p[i]), float(r[i]), float(f[i])
        m[f"support/{c}"] = float(cm[i].sum())
    if n_bootstrap > 0 and len(y_true):
        rng = np.random.default_rng(seed)
        acc, mf1 = [], []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, len(y_true), len(y_true))
            acc.append(np.mean(y_true[idx] == y_pred[idx]))
            mf1.append(_macro_f1(confusion(y_true[idx], y_pred[idx], n)))
        for key, vals in (("accuracy", acc), ("macro_f1", mf1)):
            m[f"{key}_ci_low"], m[f"{key}_ci_high"] = (float(v) for v in np.nanpercentile(vals, [2.5, 97.5]))
    return m


def validation_metrics(y_true, y_pred, classes: list[str]) -> dict[str, float]:
    """What the trainer monitors each epoch: the full set, no bootstrap."""
    return classification_metrics(y_true, y_pred, classes, 0)


def plot_confusion(cm: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    from evaluation.report import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(4.2, 3.8), dpi=120)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    ax.grid(False)
    return save_figure(fig, path)


def per_class_rows(metrics: dict[str, float], split: str, classes: list[str]) -> list[dict]:
    """The published card's layout: one row per class (precision, recall, F1, support), then macro / accuracy."""
    k = f"{split}/"
    rows = []
    for c in classes:
        scores = {s: fmt_num(metrics.get(f"{k}{s}/{c}")) for s in ("precision", "recall", "f1")}
        rows.append({"class": c, **scores, "support": str(int(metrics.get(f"{k}support/{c}", 0)))})
    n = str(int(metrics.get(f"{k}n", 0)))
    for label, name in (("macro avg", "macro_f1"), ("accuracy", "accuracy")):
        f1 = fmt_num(metrics.get(f"{k}{name}")) + fmt_ci(metrics, f"{k}{name}", " ")
        rows.append({"class": label, "precision": "", "recall": "", "f1": f1, "support": n})
    return rows


def mining_rows(metrics: dict[str, float], splits: list[str], classes: list[str]) -> list[dict]:
    """Before vs after hard-negative mining, per split: accuracy, macro F1 and per-class F1."""
    rows = []
    for split in splits:
        for name in ["accuracy", "macro_f1"] + [f"f1/{c}" for c in classes]:
            a, b = metrics.get(f"base/{split}/{name}"), metrics.get(f"{split}/{name}")
            if a is None or b is None:
                continue
            row = {"split": split, "metric": name, "without mining": fmt_num(a), "with mining": fmt_num(b)}
            rows.append({**row, "difference (points)": f"{100 * (b - a):+.1f}"})
    return rows


def count_rows(counts: dict[str, dict[str, int]]) -> list[dict]:
    rows = [{"class": c, **{k: str(v) for k, v in cols.items()}} for c, cols in counts.items()]
    if rows:
        total = {k: str(sum(c[k] for c in counts.values())) for k in next(iter(counts.values()))}
        rows.append({"class": "total", **total})
    return rows


def proposal_recall(pages, classes: list[str], proposals_cfg, iou: float = 0.5) -> dict[str, float]:
    """Share of planted objects of each class matched by a colour proposal at IoU >= ``iou``."""
    from training.classifier.proposals import box_iou, propose

    hit = dict.fromkeys(classes, 0)
    tot = dict.fromkeys(classes, 0)
    for p in pages:
        regions = propose(p.image, proposals_cfg)
        for o in p.objects:
            if o.label in tot:
                tot[o.label] += 1
                hit[o.label] += any(box_iou(o.box, r.box) >= iou for r in regions)
    return {f"proposals/recall/{c}": hit[c] / tot[c] for c in classes if tot[c]}


def save_misclassified(crops, y_true, y_pred, probs, classes, out_dir: Path, limit: int) -> None:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    index = ["file\tsource\n"]
    for i in np.flatnonzero(y_true != y_pred)[:limit]:
        name = f"{i:05d}_{classes[y_true[i]]}_as_{classes[y_pred[i]]}_{probs[i].max():.2f}.png"
        Image.fromarray(crops[i].image).save(out_dir / name)
        index.append(f"{name}\t{crops[i].ref}\n")
    if len(index) > 1:
        (out_dir / "index.tsv").write_text("".join(index), encoding="utf-8")


def _evaluate_split(
    model, base, items, split: str, classes: list[str], ev, run_dir: Path, metrics: dict
) -> Path:
    """Metrics of ``model`` (and of ``base``, the model before mining, when given) on one split's crops into
    ``metrics``; writes its misclassified crops and returns its confusion PNG."""
    y = np.asarray([c.label for c in items], int)
    probs = model.predict_proba([c.image for c in items])
    pred = probs.argmax(1)
    m = classification_metrics(y, pred, classes, int(ev.n_bootstrap), int(ev.seed))
    metrics.update({f"{split}/{k}": v for k, v in m.items()})
    cm = confusion(y, pred, len(classes))
    title = f"{split}: accuracy {m['accuracy']:.3f}"
    image = plot_confusion(cm, classes, title, run_dir / f"confusion_{split}.png")
    wrong = run_dir / "misclassified" / split
    save_misclassified(items, y, pred, probs, classes, wrong, int(ev.save_misclassified))
    if base is not None:
        bp = base.predict_proba([c.image for c in items]).argmax(1)
        mb = classification_metrics(y, bp, classes, int(ev.n_bootstrap), int(ev.seed))
        metrics.update({f"base/{split}/{k}": v for k, v in mb.items()})
    return image


def _evaluate_pages(run, cfg, classes: list[str], run_dir: Path, metrics: dict) -> list[Path]:
    """Proposal recall on the held-out test pages into ``metrics``; writes the first ``evaluation.n_pages``
    pages' results and returns their annotated images."""
    from training.classifier.pipeline import classify_page, write_page_result

    images: list[Path] = []
    test_pages = (run.pages or {}).get("test") or []
    proposals_cfg = cfg.model.proposals
    if test_pages:
        found = proposal_recall(test_pages, classes, proposals_cfg)
        metrics.update({f"test/{k}": v for k, v in found.items()})
        context = float(cfg.crops.context)
        for i, p in enumerate(test_pages[: int(cfg.evaluation.n_pages)]):
            res = classify_page(p.image, run.model, proposals_cfg, context)
            name = f"test_page_{i:05d}"
            write_page_result(p.image, res, run_dir / "pages", name, f"synthetic test page {i}")
            images.append(run_dir / "pages" / f"{name}.png")
    return images


def _provenance(cfg, run, run_dir: Path) -> tuple[dict, str]:
    """Where the run's data, weights and numbers come from, as a dict and as the report's sentence."""
    import platform

    import torch

    syn, real = cfg.crops.synthetic, cfg.get("data") is not None and cfg.crops.detection.enabled
    prov = {
        "data": f"crops: synthetic pages {dict(syn.pages) if syn.enabled else 'none'} (seed {syn.seed}); real "
        f"crops from {cfg.data.name if real else 'none'}",
        "weights": run.weights_note,
        "checkpoint": str(run_dir / "weights" / "best.pt"),
        "hardware": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    note = "Data: {data}; initial weights: {weights}; checkpoint: {checkpoint}; hardware: {hardware}; torch {torch}.".format(
        **prov
    )
    return prov, note


def _report(
    metrics: dict, splits: list[str], classes: list[str], counts: dict, note: str, run_dir: Path
) -> tuple[list[str], list[dict], list[dict]]:
    """Write classifier.md / .csv and crop_counts.csv; returns the markdown sections, the per-class rows and the
    crop-count rows."""
    md = [f"# Region classifier\n\n{note}\n"]
    csv_rows = []
    for split in splits:
        rows = per_class_rows(metrics, split, classes)
        md.append(markdown_table(rows, f"## {split}: per class"))
        csv_rows += [{"split": split, **r} for r in rows]
    mrows = mining_rows(metrics, splits, classes)
    if mrows:
        md.append(markdown_table(mrows, "## Hard-negative mining: before vs after"))
    crop_rows = count_rows(counts)
    if crop_rows:
        md.append(markdown_table(crop_rows, "## Training crops per class"))
        write_csv(run_dir / "crop_counts.csv", crop_rows)
    recall = {k: v for k, v in metrics.items() if "/proposals/recall/" in k}
    if recall:
        md.append("## Colour proposals\n\n" + "".join(f"- {k}: {v:.4f}\n" for k, v in recall.items()))
    (run_dir / "classifier.md").write_text("\n".join(md), encoding="utf-8")
    write_csv(run_dir / "classifier.csv", csv_rows)
    return md, csv_rows, crop_rows


def evaluate_classifier_run(
    backend, cfg, run_dir: Path, tracker=None, metrics: dict | None = None
) -> dict[str, float]:
    """The evaluator ``python -m training`` injects for the classifier backend (``train(cfg, evaluate=...)``).

    Evaluates what its training run left (``backend.run``): the trained classifier (and ``run.base``, the model
    before hard-negative mining) on the configured splits; writes metrics.json, classifier.md/.csv, confusion
    PNGs, misclassified crops, page-level results. ``metrics`` (e.g. training metrics) go into metrics.json.
    """
    run = backend.run
    model, crops, base, counts = run.model, run.crops, run.base, run.counts
    ev = cfg.evaluation
    classes = list(model.classes)
    metrics = dict(metrics or {})
    splits = [s for s in ev.splits if crops.get(s)]
    images = [_evaluate_split(model, base, crops[s], s, classes, ev, run_dir, metrics) for s in splits]
    # the pipeline end to end on held-out generated pages: proposal recall and page JSON / annotated images
    images += _evaluate_pages(run, cfg, classes, run_dir, metrics)
    prov, note = _provenance(cfg, run, run_dir)
    write_metrics_json(run_dir, metrics, {"provenance": prov, "classes": classes, "counts": counts or {}})
    md, csv_rows, crop_rows = _report(metrics, splits, classes, counts or {}, note, run_dir)
    if tracker is not None:
        tracker.log_summary(metrics)
        tracker.log_rows("classifier/per_class", csv_rows)
        tracker.log_rows("classifier/crop_counts", crop_rows)
        tracker.log_images("classifier/figures", images)
    print("\n".join(md))
    return metrics
