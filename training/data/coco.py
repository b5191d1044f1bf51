"""COCO JSON reader / writer (the Roboflow export layout ``<split>/_annotations.coco.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from training.data.issues import IssueLog
from training.data.schema import Annotation, Category, DetectionSplit, ImageRecord
from training.errors import DataError


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"{path}: annotation file is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: missing or non-list '{key}'")
    if not isinstance(doc.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' is not a list")
    if not doc["images"]:
        raise DataError(f"{path}: no images")
    return doc


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
        raise ValueError(f"{v!r} is not an integer")
    return int(v)


def read_coco(
    path: str | Path, split: str, issues: IssueLog, image_dir: str | Path | None = None
) -> DetectionSplit:
    """Read one COCO annotation file. Image paths resolve against ``image_dir`` (default: the file's folder).

    Malformed entries go to ``issues``; geometric / file checks happen in :func:`training.data.validate`.
    """
    path = Path(path)
    doc = _load_json(path)
    base = Path(image_dir) if image_dir is not None else path.parent

    categories: list[Category] = []
    supercategories: set[str] = set()
    for i, c in enumerate(doc["categories"]):
        try:
            categories.append(Category(_int(c["id"]), str(c["name"])))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: categories[{i}]: malformed category ({e})") from None
        if isinstance(c.get("supercategory"), str) and c["supercategory"] != c["name"]:
            supercategories.add(c["supercategory"])
    if len({c.id for c in categories}) != len(categories):
        raise DataError(f"{path}: duplicate category ids in 'categories'")

    images: list[ImageRecord] = []
    for i, im in enumerate(doc["images"]):
        try:
            iid = _int(im["id"])
            name = im["file_name"]
            if not isinstance(name, str) or not name:
                raise ValueError("empty file_name")
            w = _int(im["width"]) if "width" in im else -1
            h = _int(im["height"]) if "height" in im else -1
        except (KeyError, TypeError, ValueError) as e:
            issues.add(path, f"images[{i}]", f"malformed image entry ({e})", "malformed")
            continue
        f = Path(name)
        images.append(ImageRecord(iid, f if f.is_absolute() else base / f, w, h))

    annotations: list[Annotation] = []
    for i, a in enumerate(doc.get("annotations", [])):
        try:
            bbox = a["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError(f"bbox {bbox!r} is not [x, y, w, h]")
            box = tuple(float(v) for v in bbox)
            annotations.append(Annotation(_int(a["id"]), _int(a["image_id"]), _int(a["category_id"]), box))
        except (KeyError, TypeError, ValueError) as e:
            issues.add(path, f"annotations[{i}]", f"malformed annotation ({e})", "malformed")

    categories = _drop_roboflow_placeholder(categories, supercategories, annotations)
    return DetectionSplit(split, str(path), images, annotations, categories)


def _drop_roboflow_placeholder(
    categories: list[Category], supercategories: set[str], annotations: list[Annotation]
) -> list[Category]:
    # Roboflow COCO exports carry the project name as an extra category that no box uses and that is the
    # supercategory of the real ones; training a class that can never occur only skews the head.
    used = {a.category_id for a in annotations}
    return [c for c in categories if not (c.name in supercategories and c.id not in used)]


def write_coco(split: DetectionSplit, path: str | Path, file_names: str = "basename") -> Path:
    """Write ``split`` as COCO JSON (image names relative to the file's folder by default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split.to_coco(file_names), indent=1), encoding="utf-8")
    return path
