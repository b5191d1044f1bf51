import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tests.conftest import EMBEDDED, ROOT, data_node
from training.cli import DataError
from training.data import load_dataset, prepare_yolo
from training.data.coco import read_coco
from training.data.issues import IssueLog
from training.data.yolo import read_yolo, write_yolo_split


def coco_cfg(root: Path, **kw) -> OmegaConf:
    base = {
        "name": "t",
        "format": "coco",
        "root": str(root),
        "splits": {"train": "train", "val": "valid", "test": "test"},
    }
    base.update(kw)
    return data_node(base)


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_embedded_dataset_reads_and_has_licence():
    ds = load_dataset(coco_cfg(EMBEDDED))
    assert ds.class_names == ["signature"]
    assert [len(ds[s].images) for s in ("train", "val", "test")] == [32, 12, 12]
    assert all(ds[s].annotations for s in ("train", "val", "test"))
    assert "CC BY 4.0" in (EMBEDDED / "LICENSE.md").read_text()


def test_yolo_round_trip_and_roboflow_relative_paths(tmp_path):
    """COCO -> YOLO txt (Roboflow layout, '../train/images' paths) -> read back: same boxes."""
    ds = load_dataset(coco_cfg(EMBEDDED))
    root = tmp_path / "yolo"
    for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
        write_yolo_split(ds[split], root / folder, "")
        # write_yolo_split writes <root>/images/<folder>: flatten to the Roboflow export layout
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump(
            {
                "train": "../train/images/",
                "val": "../valid/images/",
                "test": "../test/images/",
                "nc": 1,
                "names": ["signature"],
            }
        )
    )
    cfg = data_node(
        {
            "name": "y",
            "format": "yolo",
            "yaml": str(data_yaml),
            "splits": {"train": "train", "val": "val", "test": "test"},
        }
    )
    back = load_dataset(cfg)
    for split in ("train", "val", "test"):
        a = sorted(tuple(round(v, 1) for v in x.bbox) for x in ds[split].annotations)
        b = sorted(tuple(round(v, 1) for v in x.bbox) for x in back[split].annotations)
        assert a == b


def test_yolo_cache_is_reused_and_source_untouched(tmp_path):
    before = tree_digest(EMBEDDED)
    ds = load_dataset(coco_cfg(EMBEDDED))
    y1 = prepare_yolo(ds, tmp_path / "cache")
    stamp = y1.stat().st_mtime_ns
    y2 = prepare_yolo(load_dataset(coco_cfg(EMBEDDED)), tmp_path / "cache")
    assert y1 == y2 and y2.stat().st_mtime_ns == stamp
    labels = sorted((y1.parent / "labels" / "train").glob("*.txt"))
    assert len(labels) == 32 and sum(len(f.read_text().splitlines()) for f in labels) == len(
        ds["train"].annotations
    )
    assert tree_digest(EMBEDDED) == before


def _corrupt(root: Path, fn) -> Path:
    p = root / "train" / "_annotations.coco.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))
    return p


CASES = {
    "missing_image": (lambda d: d["images"][0].update(file_name="nope.jpg"), "image id 0", "not found"),
    "box_outside": (
        lambda d: d["annotations"][0].update(bbox=[10, 10, 5000, 20]),
        "annotation id 0",
        "outside",
    ),
    "negative_size": (
        lambda d: d["annotations"][1].update(bbox=[10, 10, -3, 20]),
        "annotation id 1",
        "non-positive",
    ),
    "nan_box": (
        lambda d: d["annotations"][2].update(bbox=[10, float("nan"), 3, 20]),
        "annotation id 2",
        "non-finite",
    ),
    "unknown_category": (
        lambda d: d["annotations"][3].update(category_id=7),
        "annotation id 3",
        "unknown category",
    ),
    "duplicate_image_id": (
        lambda d: d["images"][1].update(id=d["images"][0]["id"]),
        "image id 0",
        "duplicate image id",
    ),
    "duplicate_ann_id": (
        lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]),
        "annotation id 0",
        "duplicate annotation id",
    ),
    "unknown_image": (lambda d: d["annotations"][0].update(image_id=999), "annotation id 0", "unknown image"),
    "malformed_entry": (lambda d: d["annotations"][0].pop("bbox"), "annotations[0]", "malformed"),
    "size_mismatch": (lambda d: d["images"][0].update(width=1234), "image id 0", "declared 1234"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_entries_strict_names_file_and_entry(case, embedded_copy):
    fn, entry, message = CASES[case]
    path = _corrupt(embedded_copy, fn)
    with pytest.raises(DataError) as e:
        load_dataset(coco_cfg(embedded_copy), ("train",))
    text = str(e.value)
    assert str(path) in text and entry in text and message in text and "\n" not in text


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_entries_lenient_are_skipped_and_counted(case, embedded_copy):
    fn, _, _ = CASES[case]
    _corrupt(embedded_copy, fn)
    ds = load_dataset(coco_cfg(embedded_copy, strict=False), ("train",))
    assert sum(ds.skipped.values()) >= 1
    assert ds["train"].images


def test_file_level_errors(embedded_copy):
    p = embedded_copy / "train" / "_annotations.coco.json"
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_dataset(coco_cfg(embedded_copy), ("train",))
    p.write_text('{"images": [1, 2')
    with pytest.raises(DataError, match="malformed JSON at line 1"):
        load_dataset(coco_cfg(embedded_copy), ("train",))
    p.write_text('{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(DataError, match="no images"):
        load_dataset(coco_cfg(embedded_copy, strict=False), ("train",))


def test_unreadable_image(embedded_copy):
    doc = json.loads((embedded_copy / "train" / "_annotations.coco.json").read_text())
    (embedded_copy / "train" / doc["images"][0]["file_name"]).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="unreadable image"):
        load_dataset(coco_cfg(embedded_copy), ("train",))


def _yolo_dataset(tmp_path: Path) -> Path:
    ds = load_dataset(coco_cfg(EMBEDDED), ("train",))
    write_yolo_split(ds["train"], tmp_path, "train")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "names": ["signature"]}))
    return tmp_path / "data.yaml"


def test_yolo_label_without_image_and_malformed_line(tmp_path):
    data_yaml = _yolo_dataset(tmp_path)
    orphan = tmp_path / "labels" / "train" / "ghost.txt"
    orphan.write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError) as e:
        read_yolo(data_yaml, "train", "train", IssueLog(strict=True))
    assert "ghost.txt" in str(e.value) and "no image" in str(e.value)
    orphan.unlink()
    lab = sorted((tmp_path / "labels" / "train").glob("*.txt"))[0]
    lab.write_text("0 0.5 0.5 0.1\n3 0.5 0.5 0.1 0.1\n")
    issues = IssueLog(strict=False)
    s = read_yolo(data_yaml, "train", "train", issues)
    assert len(issues.issues) == 2 and all(str(lab) in str(i) for i in issues.issues)
    assert "line 1" in str(issues.issues[0]) and "line 2" in str(issues.issues[1])
    assert len(s.images) == 32


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    field=st.sampled_from(["bbox", "image_id", "category_id", "id"]),
    value=st.one_of(
        st.none(),
        st.text(max_size=5),
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=6),
    ),
    strict=st.booleans(),
)
@example(field="image_id", value=float("inf"), strict=False)  # once crashed int() with OverflowError
def test_arbitrary_annotation_corruption_is_a_clear_error_or_skipped(field, value, strict, tmp_path_factory):
    """Whatever garbage lands in an annotation, loading either succeeds or raises DataError (one line)."""
    root = tmp_path_factory.mktemp("hyp")
    (root / "train").mkdir()
    src = EMBEDDED / "train"
    doc = json.loads((src / "_annotations.coco.json").read_text())
    doc["images"] = doc["images"][:2]
    for im in doc["images"]:
        shutil.copy(src / im["file_name"], root / "train" / im["file_name"])
    ids = {im["id"] for im in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
    doc["annotations"][0][field] = value
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(doc))
    cfg = data_node(
        {"name": "h", "format": "coco", "root": str(root), "splits": {"train": "train"}, "strict": strict}
    )
    try:
        ds = load_dataset(cfg, ("train",))
    except DataError as e:
        assert "_annotations.coco.json" in str(e) and "\n" not in str(e)
    else:
        for a in ds["train"].annotations:
            assert a.bbox[2] > 0 and a.bbox[3] > 0


def test_roboflow_placeholder_category_is_dropped(embedded_copy):
    def add_placeholder(d):
        d["categories"] = [
            {"id": 0, "name": "signatures", "supercategory": "none"},
            {"id": 1, "name": "signature", "supercategory": "signatures"},
        ]

    p = _corrupt(embedded_copy, add_placeholder)
    s = read_coco(p, "train", IssueLog())
    assert s.class_names == ["signature"]


def test_cli_bad_data_is_one_line_and_exit_2(embedded_copy, tmp_path):
    _corrupt(embedded_copy, CASES["box_outside"][0])
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "experiment=quickstart",
            "data=coco_folder",
            f"data.root={embedded_copy}",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "annotation id 0" in lines[0] and "_annotations.coco.json" in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("to", ["coco", "yolo"])
def test_convert_cli_round_trip(to, tmp_path):
    """COCO -> <to> with the CLI, read back with the matching reader: the same boxes; no overwrite."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "training.data.convert",
        f"to={to}",
        f"out={out}",
        f"data.cache_dir={tmp_path / 'c'}",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    if to == "coco":
        back = load_dataset(coco_cfg(out))
    else:
        back = load_dataset(
            data_node(
                {
                    "name": "y",
                    "format": "yolo",
                    "yaml": str(out / "data.yaml"),
                    "splits": {"train": "train", "val": "val", "test": "test"},
                }
            )
        )
    ref = load_dataset(coco_cfg(EMBEDDED))
    for split in ("train", "val", "test"):
        a = sorted(tuple(round(v, 1) for v in x.bbox) for x in ref[split].annotations)
        b = sorted(tuple(round(v, 1) for v in x.bbox) for x in back[split].annotations)
        assert a == b
    assert not any(p.is_symlink() for p in out.rglob("*"))  # standalone copy
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert (
        again.returncode == 2 and "refusing to overwrite" in again.stderr and "Traceback" not in again.stderr
    )
    assert not list(tmp_path.glob("*.log")) and not (tmp_path / "outputs").exists()
