"""Where a detector fails, for every model the evaluator scores (``evaluation.errors`` in
conf/evaluation/default.yaml):

- per-class mAP50 / mAP50-95 when the data has more than one class;
- AP by true-box area and by aspect (width / height), each bin through pycocotools' own matching: its area
  ranges applied to the value of the bin (COCOeval ignores true boxes outside a range and unmatched predictions
  outside it, whatever the value means);
- at one operating confidence (the max-F1 one): a detection confusion matrix (rows predicted, columns true,
  a background row and column; class-agnostic greedy matching by score, as ultralytics draws it), and each
  prediction and true box put in one error kind, TIDE-style (Bolya et al. 2020): a prediction is a true positive,
  a **duplicate** (its true box already taken), **wrong class** (matches a box of another class), **poor
  localisation** (overlaps a true box below the match IoU) or a **false alarm**; a true box no prediction
  covers is a **miss**;
- the worst pages by those errors, for the table and the gallery.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pycocotools.cocoeval import COCOeval

from evaluation.metrics import _map_from_precision, _quiet, coco_detections, coco_gt, iou_matrix
from evaluation.report import fmt_num, image_grid, markdown_table, save_figure
from training.backends.base import Detections
from training.data.schema import DetectionSplit

KINDS = ("miss", "false_alarm", "localisation", "duplicate", "wrong_class")
INF = 1e10  # "no upper bound" of a bin (null in the config)


def _truth(split: DetectionSplit, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """True boxes of one image as ``xyxy`` and class indices (categories sorted by id, as Detections' labels)."""
    index = split.class_index()
    anns = split.annotations_for(image_id)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a.bbox for a in anns)]).reshape(-1, 4)
    return boxes, np.array([index[a.category_id] for a in anns], dtype=np.int64)


def classify_errors(det: Detections, gt_boxes, gt_labels, iou: float, loc_iou: float) -> dict:
    """Each prediction (highest score first) and true box of one image put in one kind; see the module doc.

    Returns ``{"tp": [...], <kind>: [...]}``: prediction indices for tp / duplicate / wrong_class /
    localisation / false_alarm, true-box indices for miss.
    """
    out = {k: [] for k in ("tp", *KINDS)}
    ious = iou_matrix(det.boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    covered = np.zeros(len(gt_boxes), bool)  # touched by a wrong-class or poorly localised prediction
    for d in np.argsort(-det.scores, kind="stable"):
        same = gt_labels == det.labels[d]
        row = ious[d] if len(gt_boxes) else np.zeros(0)
        free = np.flatnonzero(same & ~taken & (row >= iou))
        if free.size:
            taken[free[np.argmax(row[free])]] = True
            out["tp"].append(int(d))
        elif np.any(same & (row >= iou)):
            out["duplicate"].append(int(d))
        elif np.any(~same & (row >= iou)):
            out["wrong_class"].append(int(d))
            covered |= ~same & (row >= iou)
        elif np.any(row >= loc_iou):
            out["localisation"].append(int(d))
            covered |= row >= loc_iou
        else:
            out["false_alarm"].append(int(d))
    out["miss"] = [int(g) for g in np.flatnonzero(~taken & ~covered)]
    return out


def confusion_matrix(split, preds: dict[int, Detections], conf: float, iou: float) -> np.ndarray:
    """``(nc + 1) x (nc + 1)`` counts, rows predicted class, columns true class, last row / column background."""
    nc = len(split.categories)
    m = np.zeros((nc + 1, nc + 1), dtype=np.int64)
    for im in split.images:
        gt_boxes, gt_labels = _truth(split, im.id)
        det = preds.get(im.id, Detections.empty()).above(conf)
        ious = iou_matrix(det.boxes, gt_boxes)
        free = np.ones(len(gt_boxes), bool)
        for d in np.argsort(-det.scores, kind="stable"):
            cand = np.flatnonzero(free & (ious[d] >= iou)) if len(gt_boxes) else []
            if len(cand):
                g = cand[np.argmax(ious[d][cand])]
                free[g] = False
                m[det.labels[d], gt_labels[g]] += 1
            else:
                m[det.labels[d], nc] += 1
        for g in np.flatnonzero(free):
            m[nc, gt_labels[g]] += 1
    return m


def _bins(node) -> list[tuple[str, float, float]]:
    return [(str(k), float(lo), INF if hi is None else float(hi)) for k, (lo, hi) in dict(node).items()]


def binned_ap(
    split: DetectionSplit, preds: dict[int, Detections], bins, value: str
) -> tuple[list, np.ndarray]:
    """pycocotools' AP with its area ranges set to ``bins`` of ``value`` (``area`` or ``aspect``).

    Returns one row per bin (``bin``, ``range``, ``n_boxes``, ``mAP50``, ``mAP50-95``) and the accumulated
    precision array ``[T, R, K, A, M]`` with an "all" range first (per-class AP reads it).
    """
    ranges = [("all", 0.0, INF), *_bins(bins)]
    gt = coco_gt(split)
    measure = (lambda w, h: w * h) if value == "area" else (lambda w, h: w / h if h > 0 else INF)
    for a in gt.dataset["annotations"]:
        a["area"] = measure(a["bbox"][2], a["bbox"][3])
    with _quiet():
        gt.createIndex()
    values = [a["area"] for a in gt.dataset["annotations"]]  # COCO's ranges include both ends
    rows = [
        {"bin": n, "range": [lo, None if hi >= INF else hi], "n_boxes": sum(lo <= v <= hi for v in values)}
        for n, lo, hi in ranges[1:]
    ]
    img_ids = [im.id for im in split.images]
    dets = coco_detections(split, {i: preds.get(i, Detections.empty()) for i in img_ids})
    if not dets:
        for r in rows:
            r["mAP50"] = r["mAP50-95"] = 0.0 if r["n_boxes"] else None
        return rows, None
    with _quiet():
        dt = gt.loadRes(dets)
        for d in dt.anns.values():
            d["area"] = measure(d["bbox"][2], d["bbox"][3])
        E = COCOeval(gt, dt, "bbox")
        E.params.imgIds = img_ids
        E.params.areaRng = [[lo, hi] for _, lo, hi in ranges]
        E.params.areaRngLbl = [n for n, _, _ in ranges]
        E.evaluate()
        E.accumulate()
    precision = E.eval["precision"]
    for a, r in enumerate(rows, start=1):
        m5095, m50 = _map_from_precision(precision[:, :, :, a : a + 1, :])
        r["mAP50"], r["mAP50-95"] = (_none(m50), _none(m5095)) if r["n_boxes"] else (None, None)
    return rows, precision


def analyse(split: DetectionSplit, preds: dict[int, Detections], conf: float, cfg) -> dict:
    """The error analysis of ``preds`` on ``split`` at confidence ``conf``; ``cfg``: ``evaluation.errors``.

    A JSON-ready dict: ``conf``, ``per_class`` (more than one class), ``by_area``, ``by_aspect``,
    ``confusion`` (``labels``, ``matrix``), ``counts`` per error kind, ``worst_pages``.
    """
    cats = sorted(split.categories, key=lambda c: c.id)
    by_area, precision = binned_ap(split, preds, cfg["area_bins"], "area")
    by_aspect, _ = binned_ap(split, preds, cfg["aspect_bins"], "aspect")
    iou, loc_iou = float(cfg["iou"]), float(cfg["loc_iou"])
    out: dict = {"conf": conf, "iou": iou, "loc_iou": loc_iou, "by_area": by_area, "by_aspect": by_aspect}
    if len(cats) > 1:
        out["per_class"] = []
        for k, c in enumerate(cats):
            at_k = precision[:, :, k : k + 1, :1, :] if precision is not None else None
            m5095, m50 = _map_from_precision(at_k) if at_k is not None else (0.0, 0.0)
            n = sum(a.category_id == c.id for a in split.annotations)
            out["per_class"].append(
                {"class": c.name, "n_boxes": n, "mAP50": _none(m50), "mAP50-95": _none(m5095)}
            )
    out["confusion"] = {
        "labels": [*(c.name for c in cats), "background"],
        "matrix": confusion_matrix(split, preds, conf, iou).tolist(),
    }
    counts = dict.fromkeys(KINDS, 0)
    pages = []
    for im in split.images:
        gt_boxes, gt_labels = _truth(split, im.id)
        det = preds.get(im.id, Detections.empty()).above(conf)
        kinds = classify_errors(det, gt_boxes, gt_labels, iou, loc_iou)
        row = {"image_id": im.id, "file": str(im.file), "n_true": len(gt_boxes), "n_pred": len(det)}
        row |= {k: len(kinds[k]) for k in KINDS}
        row["errors"] = sum(row[k] for k in KINDS)
        for k in KINDS:
            counts[k] += row[k]
        pages.append(row)
    out["counts"] = counts
    worst = sorted((p for p in pages if p["errors"]), key=lambda p: (-p["errors"], -p["miss"], p["image_id"]))
    out["worst_pages"] = worst[: int(cfg["worst_k"])]
    return out


def flat_metrics(analysis: dict) -> dict[str, float]:
    """The numbers of an analysis as flat metric keys (no split prefix): ``errors/<kind>``,
    ``<class>/mAP50``..., ``area/<bin>/mAP50``..., ``aspect/<bin>/mAP50``..."""
    out = {f"errors/{k}": float(v) for k, v in analysis["counts"].items()}
    for row in analysis.get("per_class", []):
        out |= {f"class/{row['class']}/{m}": _float(row[m]) for m in ("mAP50", "mAP50-95")}
    for group in ("area", "aspect"):
        for row in analysis[f"by_{group}"]:
            out |= {f"{group}/{row['bin']}/{m}": _float(row[m]) for m in ("mAP50", "mAP50-95")}
    return out


def _none(v: float) -> float | None:
    """JSON has no NaN: a metric without data (no true box in the bin or class) is null."""
    return None if not math.isfinite(v) else float(v)


def _float(v) -> float:
    return float("nan") if v is None else float(v)


def _range(lo, hi) -> str:
    return f"[{lo:g}, {'inf' if hi is None else f'{hi:g}'}]"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return markdown_table([dict(zip(header, map(str, r), strict=True)) for r in rows]).splitlines()


def markdown(split_name: str, analysis: dict, gallery: str | None = None) -> str:
    """The analysis as a Markdown section (appended to metrics.md)."""
    a = analysis
    lines = [
        f"## Error analysis: {split_name} (confidence {a['conf']:.3f}, the max-F1 one; IoU {a['iou']:g})",
        "",
    ]
    if "per_class" in a:
        lines += ["Per class:", ""]
        lines += _table(
            ["class", "true boxes", "mAP50", "mAP50-95"],
            [[r["class"], r["n_boxes"], fmt_num(r["mAP50"]), fmt_num(r["mAP50-95"])] for r in a["per_class"]],
        ) + [""]
    for group, what in (("area", "true-box area (px², the page's frame)"), ("aspect", "width / height")):
        lines += [f"AP by {what}:", ""]
        lines += _table(
            ["bin", "range", "true boxes", "mAP50", "mAP50-95"],
            [
                [r["bin"], _range(*r["range"]), r["n_boxes"], fmt_num(r["mAP50"]), fmt_num(r["mAP50-95"])]
                for r in a[f"by_{group}"]
            ],
        ) + [""]
    labels = a["confusion"]["labels"]
    lines += ["Confusion matrix (rows predicted, columns true):", ""]
    lines += _table(
        ["predicted \\ true", *labels],
        [[lab, *row] for lab, row in zip(labels, a["confusion"]["matrix"], strict=True)],
    )
    lines += ["", "Errors: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in a["counts"].items()), ""]
    if a["worst_pages"]:
        lines += ["Worst pages:", ""]
        lines += _table(
            ["page", "true", "predicted", *(k.replace("_", " ") for k in KINDS)],
            [
                [Path(p["file"]).name, p["n_true"], p["n_pred"], *(p[k] for k in KINDS)]
                for p in a["worst_pages"]
            ],
        )
        if gallery:
            lines += ["", f"![worst pages]({gallery})"]
    return "\n".join(lines) + "\n"


STYLE = {  # colour and short label of each kind in the gallery
    "tp": ("royalblue", ""),
    "false_alarm": ("red", "FA"),
    "localisation": ("orange", "LOC"),
    "duplicate": ("magenta", "DUP"),
    "wrong_class": ("gold", "CLS"),
}


def gallery(path: Path, split: DetectionSplit, preds: dict[int, Detections], analysis: dict) -> Path | None:
    """The worst pages: true boxes green (dashed when missed), predictions coloured by error kind."""
    if not analysis["worst_pages"]:
        return None
    from matplotlib.patches import Rectangle

    from training.data.images import load_rgb

    fig, axes = image_grid(len(analysis["worst_pages"]), 4, 4)
    for ax, page in zip(axes, analysis["worst_pages"], strict=False):
        gt_boxes, gt_labels = _truth(split, page["image_id"])
        det = preds.get(page["image_id"], Detections.empty()).above(analysis["conf"])
        kinds = classify_errors(det, gt_boxes, gt_labels, analysis["iou"], analysis["loc_iou"])
        ax.imshow(load_rgb(page["file"]))
        for g, (x0, y0, x1, y1) in enumerate(gt_boxes):
            missed = g in kinds["miss"]
            ax.add_patch(
                Rectangle(
                    (x0, y0), x1 - x0, y1 - y0, fill=False, ec="limegreen", lw=2, ls="--" if missed else "-"
                )
            )
            if missed:
                ax.text(x0, y1 + 10, "MISS", color="limegreen", fontsize=7)
        for kind, (colour, label) in STYLE.items():
            for d in kinds[kind]:
                x0, y0, x1, y1 = det.boxes[d]
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1.2))
                ax.text(x0, y0 - 2, f"{label} {det.scores[d]:.2f}".strip(), color=colour, fontsize=7)
        ax.set_title(f"{Path(page['file']).name[:32]}: {page['errors']} errors", fontsize=7)
    fig.suptitle(
        "worst pages: true (green; dashed = missed), correct (blue), false alarm FA (red), poor localisation LOC "
        "(orange), duplicate DUP (magenta), wrong class CLS (gold)",
        fontsize=8,
    )
    return save_figure(fig, path)
