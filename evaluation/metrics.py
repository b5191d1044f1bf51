"""The metric definitions (docs/outputs.md "Metric definitions"), written once and used everywhere.

- ``mAP50``, ``mAP50-95``, ``AP_small/medium/large``: COCO protocol through pycocotools (maxDets 100).
- ``precision``, ``recall``, ``f1``: from the same COCO matching at IoU 0.5 (area "all", maxDets 100),
  pooled over classes, at the confidence that maximises F1 (reported as ``conf_at_max_f1``) and at a fixed
  configured confidence (``*_at_conf``).
- 95% bootstrap intervals over images for the headline numbers: images are resampled with replacement and
  pycocotools' own ``accumulate`` is re-run on the resampled per-image matches (the matching itself does not
  depend on which other images are in the sample). P/R/F1 intervals hold the confidence fixed at the one
  chosen on the full split.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from training.backends.base import Detections
from training.data.schema import DetectionSplit

HEADLINE = ("mAP50", "mAP50-95", "precision", "recall", "f1")
CONF_GRID = np.linspace(0.0, 1.0, 1001)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    curves: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # conf, precision, recall, f1 (over CONF_GRID)


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def coco_gt(split: DetectionSplit) -> COCO:
    gt = COCO()
    doc = split.to_coco()
    # pycocotools records a match as the matched GT's id and treats id 0 as "unmatched": Roboflow exports
    # start annotation ids at 0, so renumber from 1 (https://github.com/cocodataset/cocoapi/issues/507).
    for i, a in enumerate(doc["annotations"], start=1):
        a["id"] = i
    gt.dataset = doc
    with _quiet():
        gt.createIndex()
    return gt


def coco_detections(split: DetectionSplit, preds: dict[int, Detections]) -> list[dict]:
    cat_ids = [c.id for c in sorted(split.categories, key=lambda c: c.id)]
    out = []
    for image_id, det in preds.items():
        for (x0, y0, x1, y1), s, lab in zip(det.boxes, det.scores, det.labels, strict=True):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": cat_ids[int(lab)],
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(s),
                }
            )
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every ``xyxy`` box of ``a`` with every one of ``b``: ``(len(a), len(b))``."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lo = np.maximum(a[:, None, :2], b[None, :, :2])  # top-left corners of the intersections
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _pr_at_iou50(
    evalimgs: list, n_cats: int, n_imgs: int, img_idx=None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and TP flags of all non-ignored detections at IoU 0.5, and the number of non-ignored GT."""
    idx = range(n_imgs) if img_idx is None else img_idx
    scores, tps, npig = [], [], 0
    a0 = 0  # area range 'all' comes first in COCOeval.Params
    n_area = len(evalimgs) // max(n_cats * n_imgs, 1)
    for k in range(n_cats):
        for i in idx:
            e = evalimgs[k * n_area * n_imgs + a0 * n_imgs + i]
            if e is None:
                continue
            keep = ~np.asarray(e["dtIgnore"][0], dtype=bool)
            scores.append(np.asarray(e["dtScores"])[keep])
            tps.append(np.asarray(e["dtMatches"][0])[keep] > 0)
            npig += int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool), npig
    return np.concatenate(scores), np.concatenate(tps), npig


def pr_curves(scores: np.ndarray, tps: np.ndarray, npig: int) -> dict[str, np.ndarray]:
    """Precision, recall and F1 when keeping detections with score >= each threshold of CONF_GRID."""
    order = np.argsort(-scores, kind="mergesort")
    s, tp = scores[order], tps[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    # number of detections with score >= thr, for each threshold
    n_keep = np.searchsorted(-s, -CONF_GRID, side="right")
    tp_at = np.where(n_keep > 0, ctp[np.maximum(n_keep - 1, 0)] if len(s) else 0, 0).astype(float)
    fp_at = np.where(n_keep > 0, cfp[np.maximum(n_keep - 1, 0)] if len(s) else 0, 0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp_at + fp_at > 0, tp_at / (tp_at + fp_at), 0.0)
        recall = tp_at / npig if npig > 0 else np.zeros_like(tp_at)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"conf": CONF_GRID.copy(), "precision": precision, "recall": recall, "f1": f1}


def _at(curves: dict[str, np.ndarray], conf: float) -> tuple[float, float, float]:
    i = int(np.searchsorted(CONF_GRID, conf - 1e-12))
    i = min(i, len(CONF_GRID) - 1)
    return float(curves["precision"][i]), float(curves["recall"][i]), float(curves["f1"][i])


def _max_f1_index(f1: np.ndarray) -> int:
    # the highest confidence among ties: the sparsest operating point with the best F1
    best = f1.max()
    return int(np.flatnonzero(f1 >= best - 1e-12)[-1])


def _map_from_precision(precision: np.ndarray) -> tuple[float, float]:
    """mAP50-95 and mAP50 from an accumulate()'d precision array [T, R, K, A, M] (area all, last maxDet)."""

    def mean(p):
        p = p[p > -1]
        return float(np.mean(p)) if p.size else float("nan")

    return mean(precision[:, :, :, 0, -1]), mean(precision[0, :, :, 0, -1])


class CocoMatch:
    """pycocotools evaluation of one set of predictions; keeps the per-image matches for resampling."""

    def __init__(self, split: DetectionSplit, preds: dict[int, Detections]):
        self.split = split
        self.img_ids = [im.id for im in split.images]
        gt = coco_gt(split)
        dets = coco_detections(split, {i: preds.get(i, Detections.empty()) for i in self.img_ids})
        self.has_dets = bool(dets)
        self.n_cats = len(split.categories)
        if not self.has_dets:
            self.stats = np.zeros(12)
            self.E = None
            return
        with _quiet():
            dt = gt.loadRes(dets)
            E = COCOeval(gt, dt, "bbox")
            E.params.imgIds = self.img_ids
            E.evaluate()
            E.accumulate()
            E.summarize()
        self.E = E
        self.stats = np.array(E.stats, dtype=float)

    def pr_inputs(self, img_idx=None):
        if self.E is None:
            n_gt = (
                len(self.split.annotations)
                if img_idx is None
                else sum(len(self.split.annotations_for(self.img_ids[i])) for i in img_idx)
            )
            return np.zeros(0), np.zeros(0, dtype=bool), n_gt
        return _pr_at_iou50(self.E.evalImgs, self.n_cats, len(self.img_ids), img_idx)

    def resampled_map(self, img_idx: np.ndarray) -> tuple[float, float]:
        """(mAP50-95, mAP50) over the images ``img_idx`` (with repeats), via pycocotools' accumulate."""
        if self.E is None:
            return 0.0, 0.0
        E = self.E
        n_imgs, n_area = len(self.img_ids), len(E.params.areaRng)
        B = copy.copy(E)
        p = copy.deepcopy(E.params)
        p.imgIds = list(range(len(img_idx)))
        p.areaRng, p.areaRngLbl, p.maxDets = [p.areaRng[0]], [p.areaRngLbl[0]], [p.maxDets[-1]]
        B.params, B._paramsEval = p, copy.deepcopy(p)
        B.evalImgs = [E.evalImgs[k * n_area * n_imgs + i] for k in range(self.n_cats) for i in img_idx]
        with _quiet():
            B.accumulate()
        return _map_from_precision(B.eval["precision"])


def _zero_if_gt(split: DetectionSplit, lo: float, hi: float) -> float:
    """Without detections: 0 for a COCO area range that has ground truth, n/a (NaN) for one that has none."""
    return 0.0 if any(lo <= a.area < hi for a in split.annotations) else float("nan")


def _nan_if_missing(v: float) -> float:
    return float("nan") if v < 0 else float(v)


def compute_metrics(
    split: DetectionSplit,
    preds: dict[int, Detections],
    conf_fixed: float,
    n_bootstrap: int,
    seed: int,
) -> EvalResult:
    """All metrics of ``preds`` (image id -> Detections) against ``split``; keys without a split prefix."""
    m = CocoMatch(split, preds)
    st = m.stats
    metrics = {
        "mAP50-95": float(max(st[0], 0.0)),
        "mAP50": float(max(st[1], 0.0)),
        "mAP75": float(max(st[2], 0.0)),
        "AP_small": _nan_if_missing(st[3]) if m.has_dets else _zero_if_gt(split, 0, 32**2),
        "AP_medium": _nan_if_missing(st[4]) if m.has_dets else _zero_if_gt(split, 32**2, 96**2),
        "AP_large": _nan_if_missing(st[5]) if m.has_dets else _zero_if_gt(split, 96**2, 1e10),
        "AR100": float(max(st[8], 0.0)),
    }
    scores, tps, npig = m.pr_inputs()
    curves = pr_curves(scores, tps, npig)
    i = _max_f1_index(curves["f1"])
    conf_star = float(CONF_GRID[i])
    metrics.update(
        precision=float(curves["precision"][i]),
        recall=float(curves["recall"][i]),
        f1=float(curves["f1"][i]),
        conf_at_max_f1=conf_star,
    )
    p, r, f = _at(curves, conf_fixed)
    metrics.update(
        {"precision_at_conf": p, "recall_at_conf": r, "f1_at_conf": f, "conf_fixed": float(conf_fixed)}
    )
    metrics.update({"n_images": float(len(split.images)), "n_boxes": float(len(split.annotations))})

    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = len(split.images)
        samples = {k: [] for k in HEADLINE}
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, n)
            m5095, m50 = m.resampled_map(idx)
            s_, t_, g_ = m.pr_inputs(idx)
            pb, rb, fb = _at(pr_curves(s_, t_, g_), conf_star)
            for k, v in zip(HEADLINE, (m50, m5095, pb, rb, fb), strict=True):
                samples[k].append(v)
        for k, vals in samples.items():
            arr = np.asarray(vals, dtype=float)
            arr = arr[np.isfinite(arr)]
            lo, hi = np.percentile(arr, [2.5, 97.5]) if arr.size else (np.nan, np.nan)
            metrics[f"{k}_ci_low"], metrics[f"{k}_ci_high"] = float(lo), float(hi)
        metrics["n_bootstrap"] = float(n_bootstrap)
    return EvalResult(metrics, curves)
