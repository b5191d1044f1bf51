"""The leakage audit (evaluation/leakage.py): near-copies of training pages planted into a test split (resized
0.5-1.5x, JPEG 40-95, cropped up to 5% a side, tinted: random combinations, seeded) are found, the embedded
sample's distinct pages are never paired, and the evaluator scores test with and without the copies."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation import leakage
from tests.conftest import EMBEDDED, compose_cfg, run_module
from training.backends.base import Detections
from training.cli import ConfigError

SEED = 0


def _perturb(im: Image.Image, rng: np.random.Generator):
    """A random non-empty combination of crop (<= 5% off each side), resize (0.5-1.5x), tint and JPEG (40-95);
    returns the page, the box transform ``(left, top, x scale, y scale)`` and the file format with its quality."""
    do = rng.random(4) < 0.5
    if not do.any():
        do[rng.integers(4)] = True
    w, h = im.size
    left = top = 0
    if do[0]:
        fl, ft, fr, fb = rng.uniform(0.0, 0.05, 4)
        left, top = int(fl * w), int(ft * h)
        im = im.crop((left, top, w - int(fr * w), h - int(fb * h)))
    cw, ch = im.size
    if do[1]:
        scale = rng.uniform(0.5, 1.5)
        im = im.resize((round(cw * scale), round(ch * scale)), Image.Resampling.BICUBIC)
    if do[2]:
        tint = rng.uniform(0.6, 1.0, 3) * np.asarray(im, np.float32) + rng.uniform(0, 40, 3)
        im = Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8))
    move = (left, top, im.width / cw, im.height / ch)
    return im, move, "JPEG" if do[3] else "PNG", int(rng.integers(40, 96))


def plant(dst: Path, seed: int = SEED) -> dict[str, str]:
    """The embedded sample (COCO layout) copied to ``dst`` with a near-copy of every training page added to its test
    split (boxes moved with the page); returns copy file name -> original training file name."""
    shutil.copytree(EMBEDDED, dst)
    train = json.loads((dst / "train" / "_annotations.coco.json").read_text())
    test_file = dst / "test" / "_annotations.coco.json"
    test = json.loads(test_file.read_text())
    rng = np.random.default_rng(seed)
    next_image = max(im["id"] for im in test["images"]) + 1
    next_box = max(a["id"] for a in test["annotations"]) + 1
    planted = {}
    for im_entry in train["images"]:
        page = Image.open(dst / "train" / im_entry["file_name"]).convert("RGB")
        copy, (left, top, sx, sy), fmt, quality = _perturb(page, rng)
        name = f"planted_{next_image:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        buf = io.BytesIO()
        copy.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
        (dst / "test" / name).write_bytes(buf.getvalue())
        w, h = copy.size
        test["images"].append({"id": next_image, "file_name": name, "width": w, "height": h})
        for a in train["annotations"]:
            if a["image_id"] != im_entry["id"]:
                continue
            x, y, bw, bh = a["bbox"]
            x0, y0 = max(0.0, (x - left) * sx), max(0.0, (y - top) * sy)
            x1, y1 = min(float(w), (x + bw - left) * sx), min(float(h), (y + bh - top) * sy)
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                box = [x0, y0, x1 - x0, y1 - y0]
                test["annotations"].append(
                    {"id": next_box, "image_id": next_image, "category_id": a["category_id"], "bbox": box}
                    | {"area": box[2] * box[3], "iscrowd": 0}
                )
                next_box += 1
        planted[name] = im_entry["file_name"]
        next_image += 1
    test_file.write_text(json.dumps(test))
    return planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted") / "data"
    return root, plant(root)


@pytest.fixture(scope="module")
def audit_run(planted, tmp_path_factory):
    """One ``python -m evaluation.leakage`` on the planted dataset."""
    root, _ = planted
    out = tmp_path_factory.mktemp("audit") / "run"
    r = run_module("evaluation.leakage", "data=coco_folder", f"data.root={root}", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    return out, json.loads((out / "leakage.json").read_text())


def test_the_audit_finds_planted_copies_and_pairs_no_distinct_pages(planted, audit_run):
    _, copies = planted
    _, result = audit_run
    found, wrong, distinct = set(), [], []
    for p in result["pairs"]:
        a, b = Path(p["a"]).name, Path(p["b"]).name
        copy = a if a in copies else b if b in copies else None
        other = b if copy == a else a
        if copy is None:
            distinct.append((a, b, p["distance"]))  # two untouched pages of the sample
        elif copies[copy] == other:
            found.add(copy)
        else:
            wrong.append((copy, other, p["distance"]))
    assert len(found) >= 0.95 * len(copies), (len(found), len(copies), sorted(set(copies) - found))
    assert len(wrong) <= 1, wrong
    assert not distinct, distinct
    assert result["counts"]["train/test"] >= len(found)
    assert result["pages_with_a_copy_in_train"]["test"] >= len(found)
    assert result["within_splits"] + result["across_splits"] == len(result["pairs"])


def test_the_audit_writes_its_files(audit_run):
    out, result = audit_run
    assert {"a", "a_split", "b", "b_split", "distance"} <= set(result["pairs"][0])
    assert result["pairs"][0]["a_split"] == "train" and result["pairs"][0]["b_split"] == "test"
    sheet = Image.open(out / "leakage.png")
    assert sheet.width > 400 and sheet.height > 200
    md = (out / "leakage.md").read_text()
    assert "| train/test |" in md and "leakage.png" in md
    assert (out / "config.yaml").is_file()


def test_unchanged_pages_are_at_distance_zero_and_others_far():
    nd = leakage.settings()
    files = sorted((EMBEDDED / "train").glob("*.jpg"))[:6]
    pages = [leakage.page(f, "train", nd) for f in files]
    assert leakage.distance(pages[0], pages[0], nd) == 0.0
    far = [leakage.distance(pages[0], p, nd) for p in pages[1:]]
    assert min(far) > 10 * float(nd.threshold), far


def test_bad_settings_are_one_line(tmp_path):
    cfg = compose_cfg("leakage", ["near_duplicates.hashes=[md5]"], tmp_path)
    with pytest.raises(ConfigError, match="choose among"):
        leakage.audit(cfg)
    r = run_module(
        "evaluation.leakage",
        "data=yolo_folder",
        f"data.yaml={tmp_path / 'missing.yaml'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


class _Oracle:
    """A Predictor that returns the true boxes of the planted copies and nothing elsewhere: a model that has
    memorised its training pages."""

    class_names = ["signature"]
    checkpoint = None
    device = "cpu"

    def __init__(self, split, copies):
        self.truth = {}
        for im in split.images:
            if im.file.name in copies:
                anns = split.annotations_for(im.id)
                boxes = [[a.bbox[0], a.bbox[1], a.bbox[0] + a.bbox[2], a.bbox[1] + a.bbox[3]] for a in anns]
                self.truth[str(im.file)] = Detections(
                    np.array(boxes).reshape(-1, 4), np.ones(len(anns)), np.zeros(len(anns))
                )

    def predict(self, images, conf=0.001, imgsz=None):
        return [self.truth.get(str(f), Detections.empty()) for f in images]

    def benchmark_forward(self, imgsz=None):
        return lambda: None


def test_the_evaluator_reports_test_with_and_without_near_copies(planted, tmp_path):
    from evaluation.run import evaluate_run
    from training.data import load_dataset

    root, copies = planted
    overrides = [
        "data=coco_folder",
        f"data.root={root}",
        "checkpoint=unused",
        "evaluation.splits=[test]",
        "evaluation.exclude_near_duplicates=true",
        "evaluation.n_bootstrap=0",
        "evaluation.ultralytics_metrics=false",
        "evaluation.n_page_figures=0",
        "evaluation.errors.worst_k=0",
    ]
    cfg = compose_cfg("evaluate", overrides, tmp_path)
    oracle = _Oracle(load_dataset(cfg.data, ["test"])["test"], copies)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = evaluate_run(oracle, cfg, run_dir)
    excluded = metrics["test/dedup/excluded_pages"]
    assert 0.95 * len(copies) <= excluded <= len(copies) + 1
    # the memorised copies inflate the score; without them nothing is left to find
    assert metrics["test/mAP50"] > 0.5 and metrics["test/dedup/mAP50"] < 0.5 * metrics["test/mAP50"]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["metrics"]["test/dedup/excluded_pages"] == excluded
    assert len(saved["near_duplicates_of_train"]["test"]) >= excluded
    assert "near-copy in train" in (run_dir / "metrics.md").read_text()
