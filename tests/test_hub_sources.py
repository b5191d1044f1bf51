"""HF-dataset and Roboflow code paths, exercised on local files the tests make (no network)."""

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import EMBEDDED, data_node
from training.cli import OfflineError, UserError
from training.data import load_dataset

HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def write_local_hf_dataset(root: Path) -> Path:
    """The parquet schema of tech4humans/signature-detection (image + objects{id, area, bbox, category})."""
    import datasets

    features = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": datasets.Sequence(
                {
                    "id": datasets.Value("int64"),
                    "area": datasets.Value("int64"),
                    "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                    "category": datasets.ClassLabel(names=["signatures", "signature"]),
                }
            ),
        }
    )
    (root / "data").mkdir(parents=True)
    for ours, folder in (("train", "train"), ("validation", "valid"), ("test", "test")):
        doc = json.loads((EMBEDDED / folder / "_annotations.coco.json").read_text())
        rows = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
        for im in doc["images"][:5]:
            anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
            rows["image_id"].append(im["id"])
            rows["image"].append(str(EMBEDDED / folder / im["file_name"]))
            rows["width"].append(im["width"])
            rows["height"].append(im["height"])
            rows["objects"].append(
                {
                    "id": [a["id"] for a in anns],
                    "area": [int(a["area"]) for a in anns],
                    "bbox": [a["bbox"] for a in anns],
                    "category": [1] * len(anns),
                }
            )
        ds = datasets.Dataset.from_dict(rows, features=features)
        ds.to_parquet(str(root / "data" / f"{ours}-00000-of-00001.parquet"))
    return root


def test_hf_parquet_dataset_loads_like_the_coco_source(tmp_path):
    src = write_local_hf_dataset(tmp_path / "hf")
    cfg = data_node(
        {
            "name": "hf",
            "format": "hf",
            "path": str(src),
            "revision": None,
            "splits": HF_SPLITS,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    ds = load_dataset(cfg)
    assert ds.class_names == ["signature"]  # Roboflow's placeholder class 0 is dropped
    ref = json.loads((EMBEDDED / "train" / "_annotations.coco.json").read_text())
    first5 = {im["id"] for im in ref["images"][:5]}
    want = sorted(
        tuple(round(v, 2) for v in a["bbox"]) for a in ref["annotations"] if a["image_id"] in first5
    )
    got = sorted(tuple(round(v, 2) for v in a.bbox) for a in ds["train"].annotations)
    assert got == want
    # materialised once: a second load reuses the cache
    marker = next((tmp_path / "cache" / "hf").glob("*/.complete"))
    stamp = marker.stat().st_mtime_ns
    load_dataset(cfg)
    assert marker.stat().st_mtime_ns == stamp


def test_hf_hub_id_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = data_node(
        {
            "name": "hf",
            "format": "hf",
            "path": "tech4humans/signature-detection",
            "splits": HF_SPLITS,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    with pytest.raises(OfflineError) as e:
        load_dataset(cfg)
    msg = str(e.value)
    assert "tech4humans/signature-detection" in msg and "hf download" in msg and "\n" not in msg


def rf_cfg(tmp_path):
    return data_node(
        {
            "name": "rf",
            "format": "roboflow",
            "cache_dir": str(tmp_path / "cache"),
            "roboflow": {
                "workspace": "roboflow-100",
                "project": "signatures-xc8up",
                "version": 2,
                "api_key_env": "ROBOFLOW_API_KEY",
            },
            "splits": {"train": "train", "val": "valid", "test": "test"},
        }
    )


def test_roboflow_without_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    with pytest.raises(UserError, match=r"needs an API key in \$ROBOFLOW_API_KEY"):
        load_dataset(rf_cfg(tmp_path))


def test_roboflow_download_path_with_a_local_fake(tmp_path, monkeypatch):
    """The real roboflow call chain (workspace -> project -> version -> download('coco', location))."""
    import roboflow

    calls = []

    class FakeVersion:
        def download(self, fmt, location, overwrite):
            calls.append((fmt, location))
            shutil.copytree(EMBEDDED, location, dirs_exist_ok=True)

    class FakeRoboflow:
        def __init__(self, api_key):
            assert api_key == "k-123"

        def workspace(self, ws):
            assert ws == "roboflow-100"
            return self

        def project(self, p):
            assert p == "signatures-xc8up"
            return self

        def version(self, v):
            assert v == 2
            return FakeVersion()

    monkeypatch.setenv("ROBOFLOW_API_KEY", "k-123")
    monkeypatch.setattr(roboflow, "Roboflow", FakeRoboflow)
    ds = load_dataset(rf_cfg(tmp_path))
    assert len(ds["train"].images) == 32 and calls[0][0] == "coco"
    load_dataset(rf_cfg(tmp_path))  # cached: no second download
    assert len(calls) == 1


def test_roboflow_network_failure_is_one_line(tmp_path, monkeypatch):
    import roboflow

    class Broken:
        def __init__(self, api_key):
            raise ConnectionError("Max retries exceeded with url: /\nmore detail")

    monkeypatch.setenv("ROBOFLOW_API_KEY", "k")
    monkeypatch.setattr(roboflow, "Roboflow", Broken)
    with pytest.raises(OfflineError) as e:
        load_dataset(rf_cfg(tmp_path))
    assert "\n" not in str(e.value) and "signatures-xc8up" in str(e.value)


def test_hf_rows_of_another_shape_are_one_line(tmp_path):
    """A dataset from others whose rows lack the objects, or whose ids are not numbers: one line naming the
    dataset, the split and the row (they were KeyError / ValueError tracebacks)."""
    import datasets

    img = str(next((EMBEDDED / "train").glob("*.jpg")))
    for case, rows, features in (
        ("no_objects", {"image_id": [1], "image": [img]}, {"image_id": datasets.Value("int64")}),
        (
            "text_id",
            {"image_id": ["abc"], "image": [img], "objects": [[{"bbox": [1.0, 2.0, 3.0, 4.0]}]]},
            {
                "image_id": datasets.Value("string"),
                "objects": datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32"))}),
            },
        ),
    ):
        src = tmp_path / case
        (src / "data").mkdir(parents=True)
        for ours in HF_SPLITS.values():
            ds = datasets.Dataset.from_dict(
                rows, features=datasets.Features({**features, "image": datasets.Image()})
            )
            ds.to_parquet(str(src / "data" / f"{ours}-00000-of-00001.parquet"))
        cfg = data_node(
            {
                "name": case,
                "format": "hf",
                "path": str(src),
                "revision": None,
                "splits": HF_SPLITS,
                "cache_dir": str(tmp_path / "cache"),
            }
        )
        with pytest.raises(UserError) as e:
            load_dataset(cfg)
        why = "has no column ['objects']" if case == "no_objects" else "row 0: malformed"
        assert why in str(e.value) and str(src) in str(e.value), e.value
        assert "\n" not in str(e.value)


def test_hf_dataset_fingerprint_private_name():
    """training/compat/datasets.py reads ``Dataset._fingerprint`` (no public accessor): it must exist, be a string
    and follow the content, or the materialised-copy cache would key on nothing."""
    import datasets

    from training.compat.datasets import fingerprint

    a = datasets.Dataset.from_dict({"x": [1, 2]})
    b = datasets.Dataset.from_dict({"x": [1, 3]})
    assert isinstance(fingerprint(a), str) and fingerprint(a) and fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint(datasets.Dataset.from_dict({"x": [1, 2]}))
