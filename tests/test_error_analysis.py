"""Error analysis (evaluation/error_analysis.py): error kinds, confusion matrix, AP by area / aspect / class, and the
artefacts evaluate_run writes from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from evaluation.error_analysis import analyse, binned_ap, classify_errors, confusion_matrix, flat_metrics
from tests.conftest import CONF
from tests.test_metrics import make_split, perfect
from training.backends import Detections

CFG = OmegaConf.load(CONF / "evaluation" / "default.yaml").errors


def test_each_prediction_and_true_box_gets_one_kind():
    gt = np.array([[0, 0, 100, 40], [200, 0, 300, 40], [0, 100, 100, 140], [300, 300, 400, 340]], float)
    labels = np.array([0, 0, 1, 0])
    det = Detections(
        [
            [0, 0, 100, 40],  # tp on gt 0
            [2, 0, 100, 40],  # duplicate of gt 0 (lower score)
            [0, 100, 100, 140],  # class 0 on the class-1 box: wrong class, covers gt 2
            [200, 0, 230, 40],  # IoU 0.3 with gt 1: poor localisation, covers gt 1
            [500, 500, 550, 550],  # nothing there: false alarm
        ],
        [0.9, 0.8, 0.7, 0.6, 0.5],
        [0, 0, 0, 0, 0],
    )
    kinds = classify_errors(det, gt, labels, iou=0.5, loc_iou=0.1)
    assert kinds == {
        "tp": [0],
        "duplicate": [1],
        "wrong_class": [2],
        "localisation": [3],
        "false_alarm": [4],
        "miss": [3],  # gts 1 and 2 are covered by the localisation / wrong-class errors, not missed
    }
    # with a stricter localisation threshold the poorly placed box is a false alarm and gt 1 a miss
    strict = classify_errors(det, gt, labels, iou=0.5, loc_iou=0.5)
    assert strict["false_alarm"] == [3, 4] and strict["miss"] == [1, 3]


def test_confusion_matrix_counts_background_both_ways(tmp_path):
    split = make_split([[(10, 10, 50, 20), (100, 10, 50, 20)], [(10, 50, 50, 20)]], tmp_path, n_cats=2)
    preds = perfect(split)  # classes c0, c1 on image 1 and c0 on image 2
    preds[1] = Detections(
        np.vstack([preds[1].boxes, [[150, 60, 190, 90]]]), [0.9, 0.9, 0.9], [1, 1, 0]
    )  # first box predicted as c1 (true c0), an extra c0 false alarm
    preds[2] = Detections.empty()  # a miss
    m = confusion_matrix(split, preds, conf=0.5, iou=0.5)
    assert m.tolist() == [
        [0, 0, 1],  # predicted c0: one false alarm
        [1, 1, 0],  # predicted c1: one true c0 (confused), one true c1
        [1, 0, 0],  # background: the missed c0 of image 2
    ]
    assert m.sum() == 4  # every prediction and every true box once (the confused pair once)


def test_ap_by_bin_and_class(tmp_path):
    # wide boxes (aspect 5) and tall ones (aspect 0.5), two classes
    split = make_split(
        [[(10, 10, 100, 20), (120, 10, 10, 20)], [(10, 40, 100, 20), (150, 20, 20, 40)]], tmp_path, n_cats=2
    )
    preds = perfect(split)
    only_wide = {
        i: Detections(d.boxes[keep], d.scores[keep], d.labels[keep])
        for i, d in preds.items()
        for keep in [(d.boxes[:, 2] - d.boxes[:, 0]) > (d.boxes[:, 3] - d.boxes[:, 1])]
    }
    bins = {"tall": [0, 1], "wide": [1, None]}
    rows, _ = binned_ap(split, only_wide, bins, "aspect")
    assert [(r["bin"], r["n_boxes"]) for r in rows] == [("tall", 2), ("wide", 2)]
    assert rows[0]["mAP50"] == 0.0 and rows[1]["mAP50"] == pytest.approx(1.0)
    rows, _ = binned_ap(
        split, preds, {"small": [0, 400], "medium": [400, 1000], "large": [1000, None]}, "area"
    )
    assert [r["n_boxes"] for r in rows] == [1, 1, 2] and all(r["mAP50"] == pytest.approx(1.0) for r in rows)
    rows, _ = binned_ap(split, preds, {"huge": [1e6, None]}, "area")
    assert rows[0]["n_boxes"] == 0 and rows[0]["mAP50"] is None  # n/a, not zero

    a = analyse(split, only_wide, conf=0.5, cfg=CFG)
    per_class = {r["class"]: r for r in a["per_class"]}
    assert (
        per_class["c0"]["mAP50"] == pytest.approx(1.0) and per_class["c1"]["mAP50"] == 0.0
    )  # the wide boxes are c0
    assert a["counts"]["miss"] == 2 and a["counts"]["false_alarm"] == 0
    assert [p["image_id"] for p in a["worst_pages"]] == [1, 2]
    flat = flat_metrics(a)
    assert flat["errors/miss"] == 2 and flat["class/c1/mAP50"] == 0.0 and "aspect/very_wide/mAP50" in flat
    json.dumps(a, allow_nan=False)  # metrics.json stays valid JSON

    (tmp_path / "one").mkdir()
    one_class = make_split([[(10, 10, 100, 20)]], tmp_path / "one")
    assert "per_class" not in analyse(one_class, perfect(one_class), conf=0.5, cfg=CFG)


def test_evaluate_run_writes_the_analysis(trained_run):
    _, run_dir, metrics = trained_run
    doc = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        a = doc["errors"][split]
        assert {"by_area", "by_aspect", "confusion", "counts", "worst_pages"} <= set(a)
        assert sum(sum(r) for r in a["confusion"]["matrix"]) >= doc["metrics"][f"{split}/n_boxes"]
        assert f"{split}/errors/miss" in doc["metrics"]
    md = (run_dir / "metrics.md").read_text()
    assert "## Error analysis: val" in md and "Confusion matrix" in md
    if doc["errors"]["val"]["worst_pages"]:
        assert (run_dir / "errors_val.png").stat().st_size > 0 and "errors_val.png" in md
