"""Checks a split before anything trains on it. Strict: the first problem is an error naming file and entry;
lenient (``data.strict=false``): bad entries are dropped and counted."""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from training.cli import DataError
from training.data.images import ImageChecker, ImageError
from training.data.issues import IssueLog
from training.data.schema import Annotation, DetectionSplit, ImageRecord

log = logging.getLogger(__name__)


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
    seen_files: dict[str, int] = {}
    for im, checked in zip(split.images, sizes_or_errors, strict=True):
        entry = f"split '{split.name}', image id {im.id} ({im.file})"
        if im.id in seen_ids:
            issues.add(src, entry, "duplicate image id", "duplicate_id")
            continue
        seen_ids.add(im.id)  # a known id: its boxes go with it when it is skipped below
        key = _same_file_key(im.file)
        if key in seen_files:
            # scored twice, it would count its boxes twice (and train twice as often on it)
            issues.add(src, entry, f"the same file as image id {seen_files[key]}", "duplicate_file")
            continue
        seen_files[key] = im.id
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
    seen_ann: set[int] = set()
    annotations = _checked_boxes(
        split.annotations, src, issues, sizes, seen_ids, cat_ids, seen_ann, t=box_tolerance_px
    )
    crowd = _checked_boxes(split.crowd, src, issues, sizes, seen_ids, cat_ids, seen_ann, t=box_tolerance_px)
    if crowd:
        log.info(
            "%s: split '%s': %d crowd boxes (iscrowd=1): ignore regions in evaluation, not trained on",
            src,
            split.name,
            len(crowd),
        )
    if not images:
        raise DataError(f"{src}: split '{split.name}' has no usable images")
    return DetectionSplit(split.name, src, images, annotations, list(split.categories), crowd)


def _same_file_key(path) -> str:
    """What makes two image entries the same file: the resolved path (links and ``..`` followed)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # a link loop: the file check reports it
        return str(path)


def _checked_boxes(
    anns, src, issues: IssueLog, sizes, image_ids, cat_ids, seen_ann, t: float
) -> list[Annotation]:
    """The boxes of ``anns`` that pass (clipped to their image by at most ``t`` pixels); the others to ``issues``."""
    out: list[Annotation] = []
    for a in anns:
        file, entry = src, f"annotation id {a.id} (image id {a.image_id})"
        if a.origin:  # where the reader read the box (a YOLO label file and line) beats an id it invented
            file, entry = a.origin.file, a.origin.entry
        if a.id in seen_ann:
            issues.add(file, entry, "duplicate annotation id", "duplicate_id")
            continue
        seen_ann.add(a.id)
        if a.image_id not in image_ids:
            issues.add(file, entry, "refers to an unknown image id", "unknown_image")
            continue
        if a.image_id not in sizes:
            continue  # its image was skipped
        if a.category_id not in cat_ids:
            unknown = f"unknown category id {a.category_id} (known: {sorted(cat_ids)})"
            issues.add(file, entry, unknown, "unknown_category")
            continue
        x, y, w, h = a.bbox
        iw, ih = sizes[a.image_id]
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
            out.append(replace(a, bbox=(x0, y0, x1 - x0, y1 - y0)))
            continue
        issues.add(file, entry, problem, "bad_box")
    return out


def check_split_overlap(splits: dict[str, DetectionSplit], issues: IssueLog) -> dict[str, DetectionSplit]:
    """Pages of a split that are also in an earlier one (``train`` before ``val`` before ``test``): one line in
    strict mode (a ``val:`` that names the train folder, a page copied into test); lenient (``data.strict=false``),
    they are dropped from the later split and counted, so that no score is earned on a page trained on."""
    seen: dict[str, str] = {}
    out = {}
    for name, split in splits.items():
        keep = []
        for im in split.images:
            key = _same_file_key(im.file)
            if key in seen and seen[key] != name:
                issues.add(
                    split.source,
                    f"split '{name}', image id {im.id} ({im.file})",
                    f"also in split '{seen[key]}'",
                    "split_overlap",
                )
                continue
            keep.append(im)
        for im in keep:
            seen.setdefault(_same_file_key(im.file), name)
        if len(keep) == len(split.images):
            out[name] = split
            continue
        if not keep:
            raise DataError(f"{split.source}: split '{name}' has no images that are not in an earlier split")
        ids = {im.id for im in keep}
        out[name] = replace(
            split,
            images=keep,
            annotations=[a for a in split.annotations if a.image_id in ids],
            crowd=[a for a in split.crowd if a.image_id in ids],
            _by_image=None,
        )
    return out
