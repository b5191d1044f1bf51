"""One entry point from a ``data:`` config to validated splits, and the conversion cache for backends."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from training.cli import ConfigError, DataError
from training.data.coco import read_coco
from training.data.hub import ANNOTATION_FILE, download_roboflow, materialize_hf
from training.data.images import DECODE_VERSION, ImageChecker, decode_rgb, file_digest, pixel_digest
from training.data.issues import IssueLog
from training.data.schema import DetectionSplit
from training.data.validate import check_split_overlap, validate_split
from training.data.yolo import read_yolo, write_yolo_split
from training.fileio import publish_dir, writing

log = logging.getLogger(__name__)

FORMATS = ("coco", "yolo", "hf", "roboflow", "synthetic")
# bump when the layout written by prepare_yolo changes, so that old caches are not reused
YOLO_CACHE_VERSION = 2
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def asset_path(name: str) -> str:
    """Path of a dataset carried inside the package (OmegaConf resolver ``${asset:NAME}``)."""
    return str(ASSETS / name)


def cache_root(data_cfg) -> Path:
    raw = data_cfg.get("cache_dir") or os.environ.get("SIGDET_CACHE_DIR") or "~/.cache/sigdet"
    return Path(str(raw)).expanduser()


@dataclass
class Dataset:
    """Validated splits of one dataset plus what validation skipped."""

    name: str
    splits: dict[str, DetectionSplit]
    skipped: dict[str, int] = field(default_factory=dict)
    # what validated the images: it knows each image's decoded pixels (their digest) without decoding again
    checker: ImageChecker | None = field(default=None, repr=False, compare=False)

    @property
    def class_names(self) -> list[str]:
        return next(iter(self.splits.values())).class_names

    def __getitem__(self, split: str) -> DetectionSplit:
        if split not in self.splits:
            raise ConfigError(f"dataset '{self.name}' has no split '{split}' (loaded: {sorted(self.splits)})")
        return self.splits[split]

    def content_hash(self) -> str:
        """sha256 over annotations and image bytes: the key of every conversion cache."""
        h = hashlib.sha256()
        for name in sorted(self.splits):
            s = self.splits[name]
            h.update(name.encode())
            h.update(json.dumps(s.to_coco("basename"), sort_keys=True).encode())
            for im in s.images:
                h.update(file_digest(im.file).encode())
        return h.hexdigest()

    def skipped_metrics(self) -> dict[str, float]:
        """``data/skipped/<split>/<kind>`` counts of what ``data.strict=false`` dropped, for metrics.json."""
        return {f"data/skipped/{k}": float(n) for k, n in sorted(self.skipped.items())}


def _split_folder(data_cfg, split: str) -> str:
    splits = data_cfg.get("splits") or {}
    if split not in splits:
        raise ConfigError(
            f"data '{data_cfg.get('name')}': no folder configured for split '{split}' in data.splits"
        )
    return str(splits[split])


def _read_split(data_cfg, split: str, issues: IssueLog) -> DetectionSplit:
    fmt = data_cfg.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"data.format={fmt!r} is not one of {list(FORMATS)}")
    folder = _split_folder(data_cfg, split)
    if fmt == "yolo":
        if not data_cfg.get("yaml"):
            raise ConfigError("data.format=yolo needs data.yaml=/path/to/data.yaml")
        return read_yolo(Path(str(data_cfg.yaml)).expanduser(), folder, split, issues)
    if fmt == "coco":
        if not data_cfg.get("root"):
            raise ConfigError(
                "data.format=coco needs data.root=/path/to/folder (with <split>/_annotations.coco.json)"
            )
        root = Path(str(data_cfg.root)).expanduser()
        return read_coco(root / folder / str(data_cfg.annotation_file), split, issues)
    cache = cache_root(data_cfg)
    if fmt == "synthetic":
        from training.data.synthetic import materialize

        root = materialize(data_cfg.synthetic, dict(data_cfg.splits), cache)
    elif fmt == "hf":
        root = materialize_hf(str(data_cfg.path), data_cfg.revision, dict(data_cfg.splits), cache)
    else:
        rf = data_cfg.roboflow
        root = download_roboflow(rf.workspace, rf.project, int(rf.version), cache, rf.api_key_env)
    # the file name our materialisers and Roboflow's COCO export write
    return read_coco(root / folder / ANNOTATION_FILE, split, issues)


def load_dataset(data_cfg, splits: tuple[str, ...] | list[str] = ("train", "val", "test")) -> Dataset:
    """Read and validate ``splits`` of the dataset described by ``data_cfg`` (a ``conf/data/*.yaml``)."""
    issues = IssueLog(strict=bool(data_cfg.strict))
    tol = float(data_cfg.box_tolerance_px)
    max_pixels = data_cfg.max_image_pixels
    if max_pixels and int(max_pixels) > (Image.MAX_IMAGE_PIXELS or 0):
        # PIL refuses pages above twice its own limit before we can apply ours: the configured limit decides
        Image.MAX_IMAGE_PIXELS = int(max_pixels)
    checker = ImageChecker(cache_root(data_cfg), max_pixels)
    out: dict[str, DetectionSplit] = {}
    skipped: Counter[str] = Counter()
    for split in splits:
        before = len(issues.issues)
        out[split] = validate_split(_read_split(data_cfg, split, issues), issues, tol, checker)
        skipped.update(f"{split}/{issue.kind}" for issue in issues.issues[before:])
    read, out = out, check_split_overlap(out, issues)
    skipped.update(
        {
            f"{k}/split_overlap": len(read[k].images) - len(v.images)
            for k, v in out.items()
            if v is not read[k]
        }
    )
    names = {s: tuple(v.class_names) for s, v in out.items()}
    if len(set(names.values())) > 1:
        raise DataError(f"data '{data_cfg.get('name')}': splits disagree on class names: {names}")
    issues.warn(f"data '{data_cfg.get('name')}'")
    return Dataset(str(data_cfg.name), out, dict(skipped), checker)


def prepare_yolo(dataset: Dataset, cache_dir: Path) -> Path:
    """Convert ``dataset`` to an ultralytics YOLO folder in the cache; reuse it when the content hash matches.

    Returns the path of the cache's ``data.yaml``. The source dataset is never written.
    """
    key = hashlib.sha256(
        f"yolo-v{YOLO_CACHE_VERSION}-decode{DECODE_VERSION}:{dataset.content_hash()}".encode()
    ).hexdigest()[:20]
    root = cache_dir / "yolo" / key
    data_yaml = root / "data.yaml"
    if data_yaml.is_file():
        # same content, but the images may have moved (the cache links to them): rebuild if any link is dead
        if all(p.exists() for p in (root / "images").rglob("*")):
            log.info("reusing YOLO conversion cache %s", root)
            return data_yaml
        log.info("YOLO conversion cache %s has dead image links: rebuilding", root)
        shutil.rmtree(root, ignore_errors=True)
    tmp = root.with_name(f"{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(cache_dir):  # a full cache disk names the cache, not the run folder
        for split, s in dataset.splits.items():
            write_yolo_split(s, tmp, split)
        _same_pixels_for_ultralytics(tmp / "images", dataset.checker)
    doc = {"path": str(root), "names": dict(enumerate(dataset.class_names))}
    doc.update({split: f"images/{split}" for split in dataset.splits})
    for required in ("train", "val"):  # ultralytics insists on both keys even for val-only use
        doc.setdefault(required, f"images/{next(iter(dataset.splits))}")
    (tmp / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    publish_dir(tmp, root)
    log.info("wrote YOLO conversion cache %s", root)
    return data_yaml


def _ultralytics_rgb(path: Path) -> np.ndarray | None:
    """The pixels ultralytics' own reader gives (what its datasets train and validate on), as RGB."""
    from training.compat.ultralytics import imread

    im = imread(str(path))
    return None if im is None or im.ndim != 3 or im.shape[2] != 3 else im[..., ::-1]


def _same_pixels_for_ultralytics(images_dir: Path, checker: ImageChecker | None = None) -> int:
    """Replace each linked image that ultralytics would decode differently from :func:`decode_rgb` (16-bit,
    alpha, CMYK, EXIF cases, formats cv2 reads otherwise) by a lossless PNG of our decode: training and
    evaluation then see the same pixels. Ours are compared by the digest ``checker`` kept when it validated the
    image, so only the images that differ are decoded again. Returns how many were replaced."""
    import cv2

    checker = checker or ImageChecker(None, None)
    replaced = 0
    for link in sorted(p for p in images_dir.rglob("*") if p.is_symlink() or p.is_file()):
        theirs = _ultralytics_rgb(link)
        if theirs is not None and pixel_digest(theirs) == checker.digest(link):
            continue
        ours = decode_rgb(link)
        png = link.with_suffix(".png")
        link.unlink()
        # cv2 writes BGR; PNG is lossless, so ultralytics' reader returns exactly `ours`
        if not cv2.imwrite(str(png), np.ascontiguousarray(ours[..., ::-1])):
            raise DataError(f"{png}: could not write the converted image into the cache")
        replaced += 1
    if replaced:
        log.info(
            "%s: %d images stored as PNG so that ultralytics decodes the same pixels", images_dir, replaced
        )
    return replaced
