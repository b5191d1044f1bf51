"""Page-level decisions: *is this page signed?*

A page is **signed** when it has at least one true box (any class); the detector calls it signed when its best box
scores at least the operating confidence. From the best score of each page this module gives page-level
precision / recall / F1 (with bootstrap intervals over pages) and the operating point: the highest confidence whose
page recall reaches ``evaluation.page.target_recall`` on the split it is chosen on (valid; never test). The
confidence is stored in the run's metrics.json (``operating_point``) and used by ``predict`` and the Python API.
"""

from __future__ import annotations

import math

import numpy as np

from training.backends.base import Detections
from training.data.schema import DetectionSplit

# the metrics each split gets, at the operating point (keys below "<split>/page/")
PAGE_HEADLINE = ("precision", "recall", "f1")


def best_scores(preds: list[Detections] | dict) -> np.ndarray:
    """The highest box score of each page (0.0 for a page without a box)."""
    dets = preds.values() if isinstance(preds, dict) else preds
    return np.asarray([float(d.scores.max()) if len(d) else 0.0 for d in dets], dtype=float)


def page_truth(split: DetectionSplit, preds: dict[int, Detections]) -> tuple[np.ndarray, np.ndarray]:
    """``(signed, best)`` per page of ``split``: ground truth (at least one true box, a crowd box included: a
    page whose signatures are one crowd region is signed) and the best score."""
    crowded = {a.image_id for a in split.crowd}
    signed = np.asarray(
        [len(split.annotations_for(im.id)) > 0 or im.id in crowded for im in split.images], dtype=bool
    )
    best = best_scores([preds.get(im.id, Detections.empty()) for im in split.images])
    return signed, best


def page_prf(signed: np.ndarray, best: np.ndarray, conf: float) -> tuple[float, float, float]:
    """Page-level precision, recall, F1 when a page is called signed at ``best >= conf`` (and ``best > 0``).

    Precision with no page called signed is 1.0 when no page is signed, else 0.0 (nothing was found); recall with
    no signed page is NaN (undefined).
    """
    called = (best >= conf) & (best > 0)
    tp = int(np.sum(called & signed))
    n_called, n_signed = int(called.sum()), int(signed.sum())
    precision = tp / n_called if n_called else (1.0 if n_signed == 0 else 0.0)
    recall = tp / n_signed if n_signed else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if recall == recall and precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def conf_at_recall(signed: np.ndarray, best: np.ndarray, target: float) -> tuple[float, bool]:
    """The highest confidence at which the page recall is at least ``target``, and whether it is reachable.

    Recall at confidence c counts the signed pages whose best box scores c or more; the k-th highest best score of
    the signed pages (k = ceil(target * signed pages)) is the highest c that keeps k of them. When fewer than k
    signed pages have a box at all the target cannot be reached: the lowest positive best score is returned
    (every page with a box called signed) with ``False``.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target recall {target} is not in (0, 1]")
    scores = np.sort(best[signed])[::-1]
    if scores.size == 0:
        return float("nan"), False
    k = max(1, math.ceil(target * scores.size - 1e-9))
    c = float(scores[k - 1])
    if c > 0:
        return c, True
    positive = best[best > 0]
    return (float(positive.min()) if positive.size else float("nan")), False


def page_metrics(
    signed: np.ndarray, best: np.ndarray, conf: float, n_bootstrap: int, seed: int
) -> dict[str, float]:
    """Page-level metrics at ``conf`` (keys without the split prefix, under ``page/``), 95% bootstrap intervals
    over pages when ``n_bootstrap`` > 0."""
    p, r, f = page_prf(signed, best, conf)
    out = {
        "page/precision": p,
        "page/recall": r,
        "page/f1": f,
        "page/conf": float(conf),
        "page/n_pages": float(signed.size),
        "page/n_signed": float(signed.sum()),
        "page/n_called_signed": float(np.sum((best >= conf) & (best > 0))),
        # signed pages on which the detector has no box at all: no confidence can find them
        "page/n_signed_without_box": float(np.sum(signed & (best <= 0))),
    }
    if n_bootstrap > 0 and signed.size:
        rng = np.random.default_rng(seed)
        samples = np.empty((n_bootstrap, 3))
        for b in range(n_bootstrap):
            idx = rng.integers(0, signed.size, signed.size)
            samples[b] = page_prf(signed[idx], best[idx], conf)
        for j, k in enumerate(PAGE_HEADLINE):
            col = samples[:, j][np.isfinite(samples[:, j])]
            lo, hi = np.percentile(col, [2.5, 97.5]) if col.size else (np.nan, np.nan)
            out[f"page/{k}_ci_low"], out[f"page/{k}_ci_high"] = float(lo), float(hi)
    return out


def operating_point(signed: np.ndarray, best: np.ndarray, target: float, split: str) -> dict:
    """The run's page-level operating point, chosen on ``split`` (valid): what metrics.json stores."""
    conf, reached = conf_at_recall(signed, best, target)
    _, recall, _ = page_prf(signed, best, conf) if conf == conf else (0, float("nan"), 0)
    return {
        "conf": None if conf != conf else conf,
        "target_recall": float(target),
        "reached": bool(reached),
        "recall_on_split": None if recall != recall else recall,
        "chosen_on": split,
        "n_pages": int(signed.size),
        "n_signed": int(signed.sum()),
    }
