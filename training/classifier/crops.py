"""Crop datasets for the region classifier: synthetic pages, detection datasets, COCO files, class folders.

Every source produces :class:`Crop` objects per split (train / val / test). Real signatures come from the
detection dataset the framework reads (``data:``); stamps and thumbprints from the synthetic generator, a
user's COCO files with those categories, or folder-per-class crops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from training.classifier.proposals import crop as crop_box
from training.classifier.synth import SynthConfig, SynthPage, generate_pages
from training.cli import ConfigError, DataError
from training.data.images import load_rgb
from training.data.issues import IssueLog
from training.data.schema import DetectionSplit
from training.data.yolo import image_files

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Crop:
    image: np.ndarray  # HxWx3 uint8 RGB
    label: int  # index into the classifier's classes
    source: str  # where it came from: synthetic, the dataset name, a folder
    ref: str  # the file (and entry) it was cut from, for inspection and error messages
    kind: str = "original"  # original | augmented | mined


def _check(image: np.ndarray, ref: str, min_size: int) -> None:
    if image.size == 0 or min(image.shape[:2]) < min_size:
        raise DataError(f"{ref}: empty crop ({image.shape[1]}x{image.shape[0]} px, minimum {min_size})")


def synthetic_crops(
    pages: list[SynthPage], classes: list[str], context: float, split: str, min_size: int = 4
) -> list[Crop]:
    out = []
    for i, p in enumerate(pages):
        for j, o in enumerate(p.objects):
            if o.label not in classes:
                continue
            ref = f"synthetic/{split}/page_{i:05d}#{j}"
            img = crop_box(p.image, o.box, context)
            _check(img, ref, min_size)
            out.append(Crop(np.ascontiguousarray(img), classes.index(o.label), "synthetic", ref))
    return out


def detection_crops(
    split: DetectionSplit, classes: list[str], category_map: dict, context: float, min_size: int = 4
) -> list[Crop]:
    """Crops of every box of a detection split, its category mapped to a classifier class.

    ``category_map``: dataset category name -> class name, or ``null`` to ignore that category. A category that
    is not in the map is an error naming the file (so that a new label is never silently dropped).
    """
    names = {c.id: c.name for c in split.categories}
    target: dict[int, int | None] = {}
    for cid, name in names.items():
        if name in category_map:
            mapped = category_map[name]
            if mapped is not None and mapped not in classes:
                raise ConfigError(f"crops.category_map: {name!r} -> {mapped!r} is not one of {classes}")
            target[cid] = None if mapped is None else classes.index(mapped)
        elif name in classes:
            target[cid] = classes.index(name)
        else:
            raise DataError(
                f"{split.source}: category {name!r} is not a classifier class {classes}; map it (or to null to "
                f"ignore it) with crops.category_map"
            )
    out = []
    for im in split.images:
        anns = [a for a in split.annotations_for(im.id) if target.get(a.category_id) is not None]
        if not anns:
            continue
        page = np.asarray(load_rgb(im.file))
        for a in anns:
            x, y, w, h = a.bbox
            ref = f"{im.file}#annotation {a.id}"
            img = crop_box(page, (x, y, x + w, y + h), context)
            _check(img, ref, min_size)
            out.append(
                Crop(np.ascontiguousarray(img), target[a.category_id], Path(split.source).parent.name, ref)
            )
    return out


def folder_crops(root: str | Path, classes: list[str], min_size: int = 4) -> list[Crop]:
    """``root/<class>/*.png|jpg|...``; a folder that is not a class is an error naming it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: crop folder not found")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name not in classes:
            raise DataError(f"{d}: unknown class folder {d.name!r}; valid classes: {classes}")
        for f in image_files(d):
            img = np.asarray(load_rgb(f))
            _check(img, str(f), min_size)
            out.append(Crop(img, classes.index(d.name), f"folder:{root.name}", str(f)))
    if not out:
        raise DataError(f"{root}: no images in class folders {classes}")
    return out


def build_crop_splits(
    crops_cfg, data_cfg, classes: list[str]
) -> tuple[dict[str, list[Crop]], dict[str, list]]:
    """All configured sources, per split. Also returns the synthetic pages per split (page-level checks)."""
    from training.data import load_dataset
    from training.data.coco import read_coco
    from training.data.validate import validate_split

    context, min_size = float(crops_cfg.context), int(crops_cfg.min_size)
    cmap = dict(crops_cfg.category_map)
    out: dict[str, list[Crop]] = {s: [] for s in SPLITS}
    pages: dict[str, list] = {s: [] for s in SPLITS}
    syn = crops_cfg.synthetic
    if syn.enabled:
        page_cfg = SynthConfig.from_cfg(syn.page)
        for k, split in enumerate(SPLITS):
            # a different seed stream per split: no page is shared between train and test
            pages[split] = generate_pages(int(syn.pages.get(split) or 0), int(syn.seed) * 10 + k, page_cfg)
            out[split] += synthetic_crops(pages[split], classes, context, split, min_size)
    det = crops_cfg.detection
    if det.enabled and data_cfg is not None:
        mapping = dict(det.splits)
        dataset = load_dataset(data_cfg, list(mapping.values()))
        for split, data_split in mapping.items():
            crops = detection_crops(dataset[data_split], classes, cmap, context, min_size)
            if det.max_per_split is not None:
                crops = crops[: int(det.max_per_split)]
            out[_split(split)] += crops
    for entry in crops_cfg.coco:
        issues = IssueLog(strict=True)
        split = validate_split(read_coco(Path(str(entry.file)).expanduser(), entry.split, issues), issues)
        out[_split(entry.split)] += detection_crops(split, classes, cmap, context, min_size)
    for entry in crops_cfg.folders:
        out[_split(entry.split)] += folder_crops(entry.root, classes, min_size)
    for split in ("train", "val"):
        if not out[split]:
            raise ConfigError(f"no {split} crops: enable crops.synthetic or add crops.folders / crops.coco")
    return out, pages


def _split(name: str) -> str:
    if name not in SPLITS:
        raise ConfigError(f"crop split {name!r} is not one of {list(SPLITS)}")
    return name


def class_counts(crops: list[Crop], n_classes: int) -> list[int]:
    return np.bincount([c.label for c in crops], minlength=n_classes).astype(int).tolist()


def as_kind(crops: list[Crop], kind: str) -> list[Crop]:
    return [replace(c, kind=kind) for c in crops]
