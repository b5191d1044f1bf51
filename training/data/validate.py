"""Checks a split before anything trains on it. Strict: the first problem is an error naming file and entry;
lenient (``data.strict=false``): bad entries are dropped and counted."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from training.cli import DataError
from training.data.images import ImageChecker, ImageError
from training.data.issues import IssueLog
from training.data.schema import Annotation, DetectionSplit, ImageRecord


def _decode_all(checker: ImageChecker, files: list) -> list:
    """``checker.size`` of every file, in order, an :class:`ImageError` in place of a failure. Decoding runs on
    all cores (PIL releases the GIL while it decodes); the issues are still reported in file order."""

    def one(f):
        try:
            return checker.size(f)
        except ImageError as e:
            return e

    unique = list(dict.fromkeys(files))
    with ThreadPoolExecutor(max_workers=max(1, min(len(unique), os.cpu_count() or 1))) as pool:
        done = dict(zip(unique, pool.map(one, unique), strict=True))
    return [done[f] for f in files]


def validate_split(
    split: DetectionSplit,
    issues: IssueLog,
    box_tolerance_px: float = 1.0,
    checker: ImageChecker | None = None,
) -> DetectionSplit:
    """Return a cleaned copy of ``split``; boxes overhanging the image by at most the tolerance are clipped.

    Every image is decoded completely by ``checker`` (cached by content hash): a truncated or oversized page
    fails here, naming the file and the split, not hours later in evaluation.
    """
    checker = checker or ImageChecker(None, None)
    src = split.source
    sizes_or_errors = _decode_all(checker, [im.file for im in split.images])
    images: list[ImageRecord] = []
    seen_ids: set[int] = set()
    for im, checked in zip(split.images, sizes_or_errors, strict=True):
        entry = f"split '{split.name}', image id {im.id} ({im.file})"
        if im.id in seen_ids:
            issues.add(src, entry, "duplicate image id", "duplicate_id")
            continue
        seen_ids.add(im.id)
        if isinstance(checked, ImageError):
            issues.add(src, entry, str(checked).removeprefix(f"{im.file}: "), checked.kind)
            continue
        w, h = checked
        if im.width > 0 and (im.width, im.height) != (w, h):
            mismatch = f"declared {im.width}x{im.height} but the file is {w}x{h}"
            issues.add(src, entry, mismatch, "size_mismatch")
            continue
        images.append(replace(im, width=w, height=h))

    sizes = {im.id: (im.width, im.height) for im in images}
    cat_ids = {c.id for c in split.categories}
    annotations: list[Annotation] = []
    seen_ann: set[int] = set()
    for a in split.annotations:
        file, entry = src, f"annotation id {a.id} (image id {a.image_id})"
        if a.origin:  # where the reader read the box (a YOLO label file and line) beats an id it invented
            file, entry = a.origin.file, a.origin.entry
        if a.id in seen_ann:
            issues.add(file, entry, "duplicate annotation id", "duplicate_id")
            continue
        seen_ann.add(a.id)
        if a.image_id not in seen_ids:
            issues.add(file, entry, "refers to an unknown image id", "unknown_image")
            continue
        if a.image_id not in sizes:
            continue  # its image was skipped above
        if a.category_id not in cat_ids:
            unknown = f"unknown category id {a.category_id} (known: {sorted(cat_ids)})"
            issues.add(file, entry, unknown, "unknown_category")
            continue
        x, y, w, h = a.bbox
        iw, ih = sizes[a.image_id]
        t = box_tolerance_px
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(iw), x + w), min(float(ih), y + h)
        if not all(math.isfinite(v) for v in a.bbox):
            problem = f"non-finite box {list(a.bbox)}"
        elif w <= 0 or h <= 0:
            problem = f"box {list(a.bbox)} has non-positive size"
        elif x < -t or y < -t or x + w > iw + t or y + h > ih + t:
            problem = f"box {[round(v, 2) for v in a.bbox]} lies outside the {iw}x{ih} image"
        elif x1 - x0 <= 0 or y1 - y0 <= 0:
            problem = f"box {list(a.bbox)} has no area inside the image"
        else:
            annotations.append(replace(a, bbox=(x0, y0, x1 - x0, y1 - y0)))
            continue
        issues.add(file, entry, problem, "bad_box")

    if not images:
        raise DataError(f"{src}: split '{split.name}' has no usable images")
    return DetectionSplit(split.name, src, images, annotations, list(split.categories))
