"""COCO JSON reader / writer (the Roboflow export layout ``<split>/_annotations.coco.json``)."""

from __future__ import annotations

import json
import math
import os
import reprlib
from pathlib import Path

from training.cli import DataError
from training.data.issues import IssueLog, read_utf8
from training.data.schema import Annotation, Category, DetectionSplit, ImageRecord, Origin

# our split -> Roboflow folder name, so that data=coco_folder reads the result as is
COCO_FOLDERS = {"train": "train", "val": "valid", "test": "test"}


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    text = read_utf8(path)
    if not text.strip():
        raise DataError(f"{path}: annotation file is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:  # an integer longer than Python's int-conversion limit (its advice is for coders)
        raise DataError(f"{path}: malformed JSON ({str(e).split(':')[0]})") from None
    except RecursionError:
        raise DataError(f"{path}: malformed JSON (nested too deeply)") from None
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
        raise ValueError(f"{reprlib.repr(v)} is not an integer")
    return int(v)


def _unsafe_image_path(name: str, base: Path, real_base: Path) -> str | None:
    """Why ``file_name`` ``name`` must not be opened (it leaves ``base``), or None when it stays inside.

    The annotation file comes with the data and is no more trusted than it: ``../../etc/passwd``, an
    absolute path or a symlink out of the folder would make training read, and ``convert`` copy, any file
    the user can read.
    """
    if Path(name).is_absolute():
        return f"file_name {name!r} is an absolute path; image paths must be relative to {base}"
    target = base / name
    # lexical check first so that '../x.jpg' is reported as such even when no such file exists
    if not Path(os.path.normpath(target)).is_relative_to(os.path.normpath(base)):
        return f"file_name {name!r} points outside {base}"
    try:
        real = target.resolve()
    except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: a symlink loop
        return f"file_name {name!r} cannot be resolved ({e.__class__.__name__})"
    if not real.is_relative_to(real_base):
        return f"file_name {name!r} leads through a symlink to {real}, outside {base}"
    return None


def read_coco(path: str | Path, split: str, issues: IssueLog, allow_outside: bool = False) -> DetectionSplit:
    """Read one COCO annotation file (``<split>/_annotations.coco.json``) as the split named ``split``.

    Malformed entries go to ``issues`` (raised in strict mode, skipped and counted otherwise). ``allow_outside``
    accepts absolute ``file_name`` entries and ones that lead out of the file's folder: only for files the caller
    wrote itself (e.g. ``write_coco(..., file_names="absolute")``); user data is read with the default, which
    reports such entries as ``unsafe_path`` issues. Geometric / file checks happen in
    :func:`training.data.validate.validate_split`.
    """
    path = Path(path)
    doc = _load_json(path)
    base = path.parent
    real_base = base.resolve()

    categories: list[Category] = []
    supercategories: set[str] = set()
    for i, c in enumerate(doc["categories"]):
        try:
            categories.append(Category(_int(c["id"]), str(c["name"])))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
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
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
                # no real image name holds one; a newline would also split the one-line error message
                raise ValueError(f"file_name {reprlib.repr(name)} contains a control character")
            w = _int(im["width"]) if "width" in im else -1
            h = _int(im["height"]) if "height" in im else -1
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            issues.add(path, f"images[{i}]", f"malformed image entry ({e})", "malformed")
            continue
        entry = f"images[{i}]"
        problem = None if allow_outside else _unsafe_image_path(name, base, real_base)
        if problem:
            issues.add(path, entry, problem, "unsafe_path")
            continue
        f = Path(name)
        origin = Origin(str(path), f"{entry} (image id {iid}, {f.name})")
        images.append(ImageRecord(iid, f if f.is_absolute() else base / f, w, h, origin))

    annotations: list[Annotation] = []
    crowd: list[Annotation] = []
    for i, a in enumerate(doc.get("annotations", [])):
        try:
            bbox = a["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError(f"bbox {reprlib.repr(bbox)} is not [x, y, w, h]")
            box = tuple(float(v) for v in bbox)
            aid, image_id = _int(a["id"]), _int(a["image_id"])
            # the ids stay in the entry: they are what the user searches the file for
            origin = Origin(str(path), f"annotations[{i}] (annotation id {aid}, image id {image_id})")
            is_crowd = a.get("iscrowd", 0) if isinstance(a, dict) else 0
            if is_crowd not in (0, 1) or isinstance(is_crowd, float):  # True / False are 1 / 0
                raise ValueError(f"iscrowd {reprlib.repr(is_crowd)} is not 0 or 1")
            # a crowd box (COCO's iscrowd=1) is an ignore region: scored as pycocotools does, never trained on
            (crowd if is_crowd else annotations).append(
                Annotation(aid, image_id, _int(a["category_id"]), box, origin)
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            issues.add(path, f"annotations[{i}]", f"malformed annotation ({e})", "malformed")

    categories = _drop_roboflow_placeholder(categories, supercategories, annotations)
    return DetectionSplit(split, str(path), images, annotations, categories, crowd)


def _drop_roboflow_placeholder(
    categories: list[Category], supercategories: set[str], annotations: list[Annotation]
) -> list[Category]:
    # Roboflow COCO exports carry the project name as an extra category that no box uses and that is the
    # supercategory of the real ones; training a class that can never occur only skews the head.
    used = {a.category_id for a in annotations}
    return [c for c in categories if not (c.name in supercategories and c.id not in used)]


def coco_ann(aid: int, image_id: int, category_id: int, bbox: list, area=None, **extra) -> dict:
    """One COCO annotation; ``bbox`` is ``[x, y, w, h]``, ``area`` defaults to ``w * h``."""
    area = bbox[2] * bbox[3] if area is None else area
    return dict(id=aid, image_id=image_id, category_id=category_id, bbox=bbox, area=area, iscrowd=0, **extra)


def dump_coco(path: Path, images: list, annotations: list, categories: list) -> Path:
    """Write a COCO annotation file as compact JSON (what the materialisers and generators write)."""
    doc = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def write_coco(split: DetectionSplit, path: str | Path, file_names: str = "basename") -> Path:
    """Write ``split`` as COCO JSON (image names relative to the file's folder by default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split.to_coco(file_names), indent=1), encoding="utf-8")
    return path
