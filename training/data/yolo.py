"""YOLO txt reader (``data.yaml`` + ``images/`` + ``labels/``) and writer (used for the ultralytics cache)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import yaml

from training.data.images import image_size
from training.data.issues import IssueLog
from training.data.schema import Annotation, Category, DetectionSplit, ImageRecord
from training.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def read_data_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data.yaml not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise DataError(f"{path}: expected a mapping with 'names' and split paths")
    names = doc["names"]
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: 'names' must be a non-empty list or mapping")
    doc["names"] = [str(n) for n in names]
    return doc


def _resolve_split_dir(yaml_path: Path, doc: dict, key: str) -> Path:
    if key not in doc or doc[key] in (None, ""):
        raise DataError(f"{yaml_path}: no '{key}' split")
    root = Path(doc.get("path") or ".")
    root = root if root.is_absolute() else yaml_path.parent / root
    p = Path(str(doc[key]))
    cand = p if p.is_absolute() else root / p
    if not cand.exists() and str(doc[key]).startswith("../"):
        # Roboflow writes '../train/images' although the folders sit beside data.yaml.
        cand = root / str(doc[key])[3:]
    if not cand.exists():
        raise DataError(f"{yaml_path}: {key}: folder {cand} not found")
    return cand


def _labels_dir(images_dir: Path) -> Path:
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir  # labels beside the images


def read_yolo(yaml_path: str | Path, key: str, split: str, issues: IssueLog) -> DetectionSplit:
    """Read split ``key`` (``train`` / ``val`` / ``test``) of a YOLO dataset described by ``data.yaml``."""
    yaml_path = Path(yaml_path)
    doc = read_data_yaml(yaml_path)
    images_dir = _resolve_split_dir(yaml_path, doc, key)
    labels_dir = _labels_dir(images_dir)
    names = doc["names"]
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{yaml_path}: {key}: no images in {images_dir}")
    categories = [Category(i, n) for i, n in enumerate(names)]

    images: list[ImageRecord] = []
    annotations: list[Annotation] = []
    stems = {f.stem for f in files}
    if labels_dir.is_dir():
        for lab in sorted(labels_dir.glob("*.txt")):
            if lab.stem not in stems:
                issues.add(lab, "label file", f"has no image in {images_dir}", "orphan_label")
    for iid, f in enumerate(files, start=1):
        try:
            w, h = image_size(f)
        except DataError as e:
            issues.add(f, "image", str(e).split(": ", 1)[-1], "unreadable_image")
            continue
        images.append(ImageRecord(iid, f, w, h))
        lab = labels_dir / f"{f.stem}.txt"
        if not lab.is_file():
            continue  # no label file: an image without boxes (YOLO convention)
        for ln, line in enumerate(lab.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 5:
                    raise ValueError(f"expected 'class cx cy w h', got {len(fields)} fields")
                cls = int(fields[0])
                cx, cy, bw, bh = (float(v) for v in fields[1:])
                if not 0 <= cls < len(names):
                    raise ValueError(f"class {cls} not in 0..{len(names) - 1}")
            except ValueError as e:
                issues.add(lab, f"line {ln}", f"malformed label ({e})", "malformed")
                continue
            box = ((cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h)
            annotations.append(Annotation(len(annotations) + 1, iid, cls, box))
    return DetectionSplit(split, str(yaml_path), images, annotations, categories)


def write_yolo_split(split: DetectionSplit, root: Path, folder: str, link: bool = True) -> None:
    """Write ``root/images/<folder>`` (links to, or copies of, the source images) and ``root/labels/<folder>``."""
    img_dir, lab_dir = root / "images" / folder, root / "labels" / folder
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    index = split.class_index()
    for im in split.images:
        # The id prefix keeps names unique when two source folders hold the same file name.
        name = f"{im.id}_{im.file.stem}"
        dst = img_dir / f"{name}{im.file.suffix.lower()}"
        _link_or_copy(im.file, dst, link)
        lines = []
        for a in split.annotations_for(im.id):
            x, y, bw, bh = a.bbox
            cx, cy = (x + bw / 2) / im.width, (y + bh / 2) / im.height
            vals = (cx, cy, bw / im.width, bh / im.height)
            assert all(math.isfinite(v) for v in vals)
            lines.append(f"{index[a.category_id]} " + " ".join(f"{v:.6f}" for v in vals))
        (lab_dir / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


def _link_or_copy(src: Path, dst: Path, link: bool = True) -> None:
    if dst.exists():
        return
    if link:
        try:
            os.symlink(src.resolve(), dst)
            return
        except OSError:  # no symlinks on this filesystem: copy
            pass
    shutil.copy2(src, dst)
