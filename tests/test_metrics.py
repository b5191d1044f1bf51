import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evaluation.evaluator import DetectionEvaluator
from evaluation.metrics import CocoMatch, compute_metrics
from training.backends import Detections
from training.data.schema import Annotation, Category, DetectionSplit, ImageRecord


def make_split(
    boxes_per_image: list[list[tuple[float, float, float, float]]], tmp_path, start_ann_id=0, n_cats=1
) -> DetectionSplit:
    from PIL import Image

    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image):
        f = tmp_path / f"{i}.png"
        Image.new("RGB", (200, 100)).save(f)
        images.append(ImageRecord(i + 1, f, 200, 100))
        for b in boxes:
            anns.append(Annotation(start_ann_id + len(anns), i + 1, 1 + (len(anns) % n_cats), b))
    cats = [Category(1 + k, f"c{k}") for k in range(n_cats)]
    return DetectionSplit("val", "mem", images, anns, cats)


def xyxy(b):
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def perfect(split: DetectionSplit, score=0.9) -> dict[int, Detections]:
    idx = split.class_index()
    out = {}
    for im in split.images:
        a = split.annotations_for(im.id)
        out[im.id] = Detections(
            np.array([xyxy(x.bbox) for x in a]),
            np.full(len(a), score),
            np.array([idx[x.category_id] for x in a]),
        )
    return out


def test_perfect_predictions_give_one(tmp_path):
    # annotation ids start at 0, like Roboflow exports: pycocotools must still match them
    split = make_split([[(10, 10, 50, 30)], [(100, 20, 40, 40), (20, 50, 30, 30)]], tmp_path, start_ann_id=0)
    m = compute_metrics(split, perfect(split), 0.25, 50, 0).metrics
    for k in ("mAP50", "mAP50-95", "precision", "recall", "f1", "mAP50_ci_low", "f1_ci_low"):
        assert m[k] == pytest.approx(1.0), k
    assert m["conf_at_max_f1"] == pytest.approx(0.9)


def test_one_missed_box_of_two_gives_recall_half(tmp_path):
    split = make_split([[(10, 10, 50, 30), (100, 20, 40, 40)]], tmp_path)
    preds = {1: Detections(np.array([xyxy((10, 10, 50, 30))]), np.array([0.8]), np.array([0]))}
    m = compute_metrics(split, preds, 0.25, 0, 0).metrics
    assert m["recall"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["mAP50"] == pytest.approx(0.5, abs=0.01)


def test_fixed_confidence_operating_point(tmp_path):
    split = make_split([[(10, 10, 50, 30), (100, 20, 40, 40)]], tmp_path)
    preds = {
        1: Detections(
            np.array([xyxy((10, 10, 50, 30)), xyxy((100, 20, 40, 40))]),
            np.array([0.9, 0.2]),
            np.array([0, 0]),
        )
    }
    m = compute_metrics(split, preds, 0.25, 0, 0).metrics
    assert m["recall_at_conf"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1.0)
    assert m["conf_at_max_f1"] == pytest.approx(0.2)


def test_no_predictions_is_zero_not_a_crash(tmp_path):
    split = make_split([[(10, 10, 50, 30)]], tmp_path)
    m = compute_metrics(split, {}, 0.25, 10, 0).metrics
    assert m["mAP50"] == 0 and m["recall"] == 0 and m["f1"] == 0


def _random_case(tmp_path, seed, n_images=12, n_cats=2):
    rng = np.random.default_rng(seed)
    gts = []
    for _ in range(n_images):
        boxes = []
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 150), rng.uniform(0, 60)
            boxes.append((x, y, rng.uniform(5, 200 - x), rng.uniform(5, 100 - y)))
        gts.append(boxes)
    split = make_split(gts, tmp_path, start_ann_id=1, n_cats=n_cats)
    preds = {}
    for im in split.images:
        dets, scores, labels = [], [], []
        for a in split.annotations_for(im.id):
            if rng.random() < 0.8:
                jitter = rng.normal(0, 4, 4)
                b = np.array(xyxy(a.bbox)) + jitter
                b = [
                    min(b[0], b[2]),
                    min(b[1], b[3]),
                    max(b[0], b[2]) + 1,
                    max(b[1], b[3]) + 1,
                ]  # keep it a box
                dets.append(b)
                scores.append(rng.uniform(0.05, 1))
                labels.append(split.class_index()[a.category_id])
        for _ in range(rng.integers(0, 3)):  # false positives
            x, y = rng.uniform(0, 150), rng.uniform(0, 60)
            dets.append([x, y, x + 30, y + 20])
            scores.append(rng.uniform(0.0, 1))
            labels.append(int(rng.integers(0, n_cats)))
        preds[im.id] = Detections(np.array(dets).reshape(-1, 4), np.array(scores), np.array(labels))
    return split, preds


def _brute_force_pr(split, preds, conf):
    """Greedy IoU>=0.5 matching per image and class, by descending score: the COCO rule at one threshold."""
    tp = fp = 0
    idx = split.class_index()
    for im in split.images:
        det = preds[im.id].above(conf)
        for c in range(len(split.categories)):
            g = [xyxy(a.bbox) for a in split.annotations_for(im.id) if idx[a.category_id] == c]
            used = [False] * len(g)
            order = np.argsort(-det.scores, kind="mergesort")
            for j in order:
                if det.labels[j] != c:
                    continue
                best, bi = 0.5, -1
                for k, gb in enumerate(g):
                    if used[k]:
                        continue
                    b = det.boxes[j]
                    iw = max(0, min(b[2], gb[2]) - max(b[0], gb[0]))
                    ih = max(0, min(b[3], gb[3]) - max(b[1], gb[1]))
                    inter = iw * ih
                    iou = inter / ((b[2] - b[0]) * (b[3] - b[1]) + (gb[2] - gb[0]) * (gb[3] - gb[1]) - inter)
                    if iou >= best:
                        best, bi = iou, k
                if bi >= 0:
                    used[bi] = True
                    tp += 1
                else:
                    fp += 1
    n_gt = len(split.annotations)
    return tp / max(tp + fp, 1), tp / n_gt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocotools_and_brute_force(seed, tmp_path):
    split, preds = _random_case(tmp_path, seed)
    m = compute_metrics(split, preds, 0.3, 0, 0).metrics
    # reference: plain pycocotools on the same data
    gt = COCO()
    gt.dataset = split.to_coco()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dets = [
            {
                "image_id": i,
                "category_id": split.categories[int(lab)].id,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                "score": float(s),
            }
            for i, d in preds.items()
            for b, s, lab in zip(d.boxes, d.scores, d.labels, strict=True)
        ]
        E = COCOeval(gt, gt.loadRes(dets), "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    assert m["mAP50-95"] == pytest.approx(E.stats[0], abs=1e-9)
    assert m["mAP50"] == pytest.approx(E.stats[1], abs=1e-9)
    p, r = _brute_force_pr(split, preds, 0.3)
    assert m["precision_at_conf"] == pytest.approx(p, abs=1e-9)
    assert m["recall_at_conf"] == pytest.approx(r, abs=1e-9)


def test_bootstrap_identity_resample_reproduces_pycocotools(tmp_path):
    split, preds = _random_case(tmp_path, 5)
    match = CocoMatch(split, preds)
    m5095, m50 = match.resampled_map(np.arange(len(split.images)))
    assert m5095 == pytest.approx(match.stats[0]) and m50 == pytest.approx(match.stats[1])


def test_bootstrap_interval_brackets_the_estimate(tmp_path):
    split, preds = _random_case(tmp_path, 3, n_images=30)
    m = compute_metrics(split, preds, 0.25, 200, 1).metrics
    for k in ("mAP50", "mAP50-95", "f1"):
        assert m[f"{k}_ci_low"] <= m[k] <= m[f"{k}_ci_high"]
        assert m[f"{k}_ci_low"] < m[f"{k}_ci_high"]


def test_evaluator_reset_process_evaluate(tmp_path):
    split = make_split([[(10, 10, 50, 30)], [(100, 20, 40, 40)]], tmp_path)
    ev = DetectionEvaluator(split, 0.25, 0, 0)
    p = perfect(split)
    ev.process([1], [p[1]])
    assert ev.evaluate().metrics["recall"] == pytest.approx(0.5)
    ev.process([2], [p[2]])
    assert ev.evaluate().metrics["recall"] == pytest.approx(1.0)
    ev.reset()
    assert ev.evaluate().metrics["recall"] == 0
