"""Parity of an exported model with its PyTorch reference: per-image box matching, score and raw-output
differences, and the evaluator's metrics on the validation split through both."""

from __future__ import annotations

import numpy as np

from evaluation.metrics import iou_matrix
from training.backends.base import Detections

# metric -> the bound of its drop from the reference to the export
DROP_BOUNDS = {"mAP50": "max_map50_drop", "mAP50-95": "max_map_drop", "accuracy": "max_accuracy_drop"}


def match_detections(ref: list[Detections], got: list[Detections], score_min: float, iou: float) -> dict:
    """Greedy matching (by reference score) of the reference's confident boxes to the export's, same label,
    IoU >= ``iou``. ``match_rate`` = matched / reference boxes (1.0 when the reference has none), ``mean_iou`` and
    ``max_score_diff`` over matched pairs, ``unmatched_export`` = confident export boxes left over."""
    n_ref = matched = extra = 0
    ious, diffs = [], []
    for r, g in zip(ref, got, strict=True):
        rk, gk = r.scores >= score_min, g.scores >= score_min
        rb, rs, rl = r.boxes[rk], r.scores[rk], r.labels[rk]
        gb, gs, gl = g.boxes[gk], g.scores[gk], g.labels[gk]
        m = iou_matrix(rb, gb)
        used = np.zeros(len(gb), bool)
        for i in np.argsort(-rs):
            n_ref += 1
            cand = np.where((~used) & (gl == rl[i]) & (m[i] >= iou))[0] if len(gb) else []
            if len(cand):
                j = cand[np.argmax(m[i, cand])]
                used[j] = True
                matched += 1
                ious.append(m[i, j])
                diffs.append(abs(float(rs[i]) - float(gs[j])))
        extra += int((~used).sum())
    return {
        "ref_boxes": float(n_ref),
        "match_rate": matched / n_ref if n_ref else 1.0,
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "max_score_diff": float(np.max(diffs)) if diffs else 0.0,
        "unmatched_export": float(extra),
    }


def raw_difference(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """Largest absolute difference of the raw outputs, relative to the reference's largest magnitude."""
    worst = 0.0
    for r_outs, g_outs in zip(ref, got, strict=True):
        for r, g in zip(r_outs, g_outs, strict=True):
            r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
            if r.shape != g.shape:
                return float("inf")
            worst = max(worst, float(np.abs(r - g).max() / max(np.abs(r).max(), 1e-6)))
    return worst


def check(metrics: dict[str, float], bounds: dict) -> list[str]:
    """The bounds a parity result breaks, as readable phrases (empty = passed).

    ``bounds`` keys (each optional): ``max_map50_drop``, ``max_map_drop`` (mAP50-95), ``max_accuracy_drop``
    (classifier), ``min_match_rate``, ``max_score_diff``, ``max_raw_diff`` (relative), ``min_top1_agreement``.
    """
    problems = []
    for key, bound_key in DROP_BOUNDS.items():
        if bounds.get(bound_key) is None or f"ref/{key}" not in metrics:
            continue
        d, b = metrics[f"ref/{key}"] - metrics[f"export/{key}"], float(bounds[bound_key])
        if not np.isfinite(d) or d > b:
            problems.append(f"{key} dropped by {100 * d:.2f} points (bound {100 * b:.2f})")
    for key, bound_key, low in (
        ("match_rate", "min_match_rate", True),
        ("top1_agreement", "min_top1_agreement", True),
        ("max_score_diff", "max_score_diff", False),
        ("raw_diff", "max_raw_diff", False),
    ):
        if bounds.get(bound_key) is None or key not in metrics:
            continue
        v, b = metrics[key], float(bounds[bound_key])
        if (v < b) if low else not (v <= b):
            problems.append(f"{key} {v:.4g} {'<' if low else '>'} bound {b:.4g}")
    return problems
