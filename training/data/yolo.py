"""YOLO txt reader (``data.yaml`` + ``images/`` + ``labels/``) and writer (used for the ultralytics cache)."""

from __future__ import annotations

import math
import os
import reprlib
import shutil
from pathlib import Path

import yaml

from training.cli import DataError
from training.data.images import IMAGE_SUFFIXES, image_size
from training.data.issues import IssueLog, read_bytes, read_utf8, utf8_problem
from training.data.schema import Annotation, Category, DetectionSplit, ImageRecord, Origin


def image_files(folder: Path) -> list[Path]:
    """The images directly in ``folder`` (by suffix, any case), sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_data_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data.yaml not found")
    try:
        doc = yaml.safe_load(read_utf8(path))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise DataError(f"{path}: malformed YAML (nested too deeply)") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise DataError(f"{path}: expected a mapping with 'names' and split paths")
    names = doc["names"]
    if isinstance(names, dict):
        # ultralytics writes {0: a, 1: b}: the keys are the class indices, so they must be 0..n-1
        if not all(type(k) is int for k in names) or set(names) != set(range(len(names))):
            raise DataError(f"{path}: 'names' keys must be the class indices 0..{len(names) - 1}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: 'names' must be a non-empty list or mapping")
    if not all(isinstance(n, (str, int, float)) and not isinstance(n, bool) for n in names):
        raise DataError(f"{path}: 'names' entries must be plain names (strings)")
    doc["names"] = [str(n) for n in names]
    return doc


def _resolve_split_dir(yaml_path: Path, doc: dict, key: str) -> Path:
    if key not in doc or doc[key] in (None, ""):
        raise DataError(f"{yaml_path}: no '{key}' split")
    for k in ("path", key):
        # ultralytics also accepts lists of folders and image-list files; this reader takes one folder
        if doc.get(k) is not None and not isinstance(doc[k], str):
            raise DataError(f"{yaml_path}: '{k}' must be one folder path, not {type(doc[k]).__name__}")
    root = Path(doc.get("path") or ".")
    root = root if root.is_absolute() else yaml_path.parent / root
    p = Path(str(doc[key]))
    cand = p if p.is_absolute() else root / p
    if not cand.exists() and str(doc[key]).startswith("../"):
        # Roboflow writes '../train/images' although the folders sit beside data.yaml.
        cand = root / str(doc[key])[3:]
    if not cand.is_dir():
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
    files = image_files(images_dir)
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
            issues.add(f, "image", str(e).split(": ", 1)[-1], getattr(e, "kind", "unreadable_image"))
            continue
        lab = labels_dir / f"{f.stem}.txt"
        # no label file: an image without boxes (YOLO convention)
        lines = _label_lines(lab, issues) if lab.is_file() else []
        if lines is None:
            continue  # unreadable label file (lenient mode): its boxes are unknown, so the image is skipped too
        images.append(ImageRecord(iid, f, w, h, Origin(str(f), "image")))
        for ln, line in lines:
            try:
                cls, (cx, cy, bw, bh) = _parse_label(line, len(names))
            except ValueError as e:
                issues.add(lab, f"line {ln}", f"malformed label ({e})", "malformed")
                continue
            box = ((cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h)
            origin = Origin(str(lab), f"line {ln}")
            annotations.append(Annotation(len(annotations) + 1, iid, cls, box, origin))
    return DetectionSplit(split, str(yaml_path), images, annotations, categories)


def _label_lines(lab: Path, issues: IssueLog) -> list[tuple[int, str]] | None:
    """Non-blank ``(line number, text)`` pairs of a label file; None (after reporting) if it is not readable text."""
    try:
        data = read_bytes(lab)
    except DataError as e:
        issues.add(lab, "label file", str(e).split(": ", 1)[-1], "unreadable_label")
        return None
    problem = utf8_problem(data)
    if problem:
        issues.add(lab, "label file", problem, "encoding")
        return None
    # split on '\n' only (not str.splitlines, which also breaks at \x0b, \x1c, \u2028, ...) so that line
    # numbers are the ones an editor shows
    text = data.decode("utf-8-sig")
    return [(n, ln) for n, ln in enumerate(text.split("\n"), start=1) if ln.strip()]


def _parse_label(line: str, n_classes: int) -> tuple[int, tuple[float, float, float, float]]:
    """``class cx cy w h`` (normalised) of one label line; ``ValueError`` with a short reason otherwise.

    Out-of-image boxes are left to validation (it applies ``data.box_tolerance_px``); what no tolerance can
    make valid is rejected here, where the line is known.
    """
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"expected 'class cx cy w h', got {len(fields)} fields")
    try:
        cls = int(fields[0])
    except ValueError:
        raise ValueError(f"class {reprlib.repr(fields[0])} is not an integer") from None
    if not 0 <= cls < n_classes:
        raise ValueError(f"class {reprlib.repr(fields[0])} not in 0..{n_classes - 1}")
    vals = []
    for name, v in zip(("cx", "cy", "w", "h"), fields[1:], strict=True):
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"{name} {reprlib.repr(v)} is not a number") from None
        if not math.isfinite(x):
            raise ValueError(f"{name} {reprlib.repr(v)} is not finite")
        vals.append(x)
    if vals[2] <= 0 or vals[3] <= 0:
        raise ValueError(f"box size {vals[2]:g}x{vals[3]:g} is not positive")
    return cls, (vals[0], vals[1], vals[2], vals[3])


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
