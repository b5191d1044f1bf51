"""The COCO protocol's annotation semantics (issue 40): crowd boxes are ignore regions (scored as pycocotools does,
never trained on), one file under two image ids is refused, and a page in two splits is refused (lenient mode:
dropped from the later split and counted)."""

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.metrics import compute_metrics
from tests.test_data import coco_cfg
from training.backends.base import Detections
from training.cli import DataError
from training.data import load_dataset, prepare_yolo
from training.data.issues import IssueLog
from training.data.validate import check_split_overlap


def _edit(root: Path, folder: str, fn) -> None:
    f = root / folder / "_annotations.coco.json"
    doc = json.loads(f.read_text())
    fn(doc)
    f.write_text(json.dumps(doc))


def _perfect(split) -> dict[int, Detections]:
    """Every true and crowd box of ``split`` predicted at score 0.9."""
    boxes: dict[int, list] = {im.id: [] for im in split.images}
    for a in [*split.annotations, *split.crowd]:
        x, y, w, h = a.bbox
        boxes[a.image_id].append([x, y, x + w, y + h])
    return {
        i: Detections(
            np.asarray(b, np.float32).reshape(-1, 4), np.full(len(b), 0.9), np.zeros(len(b), np.int64)
        )
        for i, b in boxes.items()
    }


def test_crowd_boxes_are_ignore_regions_and_not_trained_on(embedded_copy, tmp_path):
    def crowd_half(doc):
        for a in doc["annotations"][::2]:
            a["iscrowd"] = 1

    _edit(embedded_copy, "valid", crowd_half)
    _edit(embedded_copy, "train", crowd_half)
    ds = load_dataset(coco_cfg(embedded_copy))
    val = ds["val"]
    n_crowd, n_true = len(val.crowd), len(val.annotations)
    assert n_crowd > 0 and n_true > 0
    # a detection on a crowd box is neither a true nor a false positive: perfect boxes stay perfect
    m = compute_metrics(val, _perfect(val), 0.25, 0, 0).metrics
    assert m["mAP50"] == pytest.approx(1.0) and m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(1.0)
    # the crowd boxes are in the COCO ground truth as iscrowd=1, not as boxes to find
    doc = val.to_coco()
    assert sum(a["iscrowd"] for a in doc["annotations"]) == n_crowd
    # training data: the YOLO labels hold the ordinary boxes only
    yolo = prepare_yolo(ds, tmp_path / "cache").parent
    lines = [ln for f in (yolo / "labels" / "train").glob("*.txt") for ln in f.read_text().splitlines()]
    assert len(lines) == len(ds["train"].annotations) < len(ds["train"].annotations) + len(ds["train"].crowd)


def test_all_crowd_data_does_not_score_as_found(embedded_copy):
    def all_crowd(doc):
        for a in doc["annotations"]:
            a["iscrowd"] = 1

    _edit(embedded_copy, "valid", all_crowd)
    val = load_dataset(coco_cfg(embedded_copy), ["val"])["val"]
    assert not val.annotations and val.crowd
    m = compute_metrics(val, _perfect(val), 0.25, 0, 0).metrics
    assert m["mAP50"] == 0.0  # was 1.0: the crowd boxes counted as boxes found


@pytest.mark.parametrize("value", [2, "1", 0.5, None])
def test_malformed_iscrowd_names_the_entry(embedded_copy, value):
    def bad(doc):
        doc["annotations"][3]["iscrowd"] = value

    _edit(embedded_copy, "valid", bad)
    with pytest.raises(
        DataError, match=r"annotations\[3\]: malformed annotation \(iscrowd .* is not 0 or 1\)"
    ):
        load_dataset(coco_cfg(embedded_copy), ["val"])


def _twice(doc):
    im = doc["images"][0]
    new_id = max(i["id"] for i in doc["images"]) + 1
    doc["images"].append(dict(im, id=new_id))
    box = next(a for a in doc["annotations"] if a["image_id"] == im["id"])
    doc["annotations"].append(dict(box, id=max(a["id"] for a in doc["annotations"]) + 1, image_id=new_id))


def test_one_file_under_two_ids_is_refused(embedded_copy):
    _edit(embedded_copy, "valid", _twice)
    with pytest.raises(DataError, match=r"valid/_annotations.coco.json: .*the same file as image id"):
        load_dataset(coco_cfg(embedded_copy), ["val"])
    ds = load_dataset(coco_cfg(embedded_copy, strict=False), ["val"])
    assert len(ds["val"].images) == 12 and ds.skipped == {"val/duplicate_file": 1}


def test_a_split_that_is_another_split_is_refused(embedded_copy):
    cfg = coco_cfg(embedded_copy, splits={"train": "train", "val": "train", "test": "test"})
    with pytest.raises(DataError, match=r"split 'val', image id .*: also in split 'train'"):
        load_dataset(cfg)
    with pytest.raises(DataError, match="split 'val' has no images that are not in an earlier split"):
        load_dataset(
            coco_cfg(embedded_copy, strict=False, splits={"train": "train", "val": "train"}), ["train", "val"]
        )


def test_overlapping_pages_are_dropped_from_the_later_split_when_lenient(embedded_copy):
    ds = load_dataset(coco_cfg(embedded_copy))
    train, test = ds["train"], ds["test"]
    leaked = train.images[:2]
    mixed = type(test)(
        "test",
        test.source,
        [*test.images, *leaked],
        [*test.annotations, *(a for a in train.annotations if a.image_id in {im.id for im in leaked})],
        test.categories,
    )
    issues = IssueLog(strict=False)
    out = check_split_overlap({"train": train, "test": mixed}, issues)
    assert [i.kind for i in issues.issues] == ["split_overlap", "split_overlap"]
    assert out["train"] is train and len(out["test"].images) == len(test.images)
    assert {a.image_id for a in out["test"].annotations} <= {im.id for im in test.images}
    with pytest.raises(DataError, match="also in split 'train'"):
        check_split_overlap({"train": train, "test": mixed}, IssueLog(strict=True))


def test_metrics_json_names_the_files_read(trained_run):
    """metrics.json names the annotation files each split was read from, not only the config's name (issue 40)."""
    _, run_dir, _ = trained_run
    prov = json.loads((run_dir / "metrics.json").read_text())["provenance"]
    assert set(prov["data_sources"]) == {"val", "test"}
    assert all(Path(src).is_file() for src in prov["data_sources"].values())
    assert prov["data_sources"]["val"] in (run_dir / "metrics.md").read_text()
