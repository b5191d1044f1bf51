"""Copy-paste of real signature crops from the *training* split onto training pages.

A crop is the annotated box of a training signature. It is pasted like ink on paper: divided by its own paper
colour (so the source page's tint and grey background vanish) and multiplied onto the target page, optionally
re-inked. Sizes keep the source's size relative to its page (with jitter), positions follow where signatures
occur in the training split, and a crop never lands on an existing or already pasted box. The pasted box is the
crop's extent, the annotators' own convention.

Ultralytics has a ``copy_paste`` augmentation, but it needs instance *segments* (it flips polygons within the
same image); boxes-only detection data has none, so it does nothing here. The paste is hooked in through the
dataset's ``get_image_and_label`` (see :class:`PastingLoader`; the hook is
:func:`training.compat.ultralytics.wrap_label_loading`), before ultralytics' mosaic and affine, so
pasted signatures go through every later augmentation like real ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import cv2
import numpy as np

from training.cli import ConfigError


@dataclass(frozen=True)
class PasteConfig:
    """``recipe.copy_paste`` (conf/recipe/document.yaml holds every value; no defaults here)."""

    p: float  # probability that a page receives pasted crops
    n: tuple[int, int]  # crops per receiving page, inclusive
    scale: tuple[float, float]  # size jitter around the crop's size relative to its source page
    aspect: tuple[float, float]  # height / width jitter
    position_prior_p: float  # else a uniform position
    position_jitter: float  # std of the jitter around a training position, as a page fraction
    recolor_p: float  # re-ink with one of ``inks`` instead of the crop's own colour
    inks: tuple[tuple[int, int, int], ...]  # RGB
    gap_px: int  # free pixels kept around every existing box
    max_tries: int  # placement attempts per crop
    min_side_px: int  # smaller pasted crops are not labelled objects, so none are pasted

    @classmethod
    def from_cfg(cls, cfg) -> PasteConfig:
        from training.overrides import settings_kwargs

        out = cls(**settings_kwargs(cls, cfg, "recipe.copy_paste"))
        if not 0.0 <= out.p <= 1.0 or not 0.0 <= out.recolor_p <= 1.0 or not 0 <= out.position_prior_p <= 1:
            raise ConfigError(
                "recipe.copy_paste: p, recolor_p and position_prior_p are probabilities in [0, 1]"
            )
        if out.n[0] < 0 or out.n[1] < out.n[0] or min(out.scale) <= 0 or min(out.aspect) <= 0:
            raise ConfigError("recipe.copy_paste: n is [min, max] with 0 <= min <= max; scale and aspect > 0")
        return out


@dataclass
class CropBank:
    """Crops (BGR, like ultralytics' images) of every training box, with where and how large they were."""

    crops: list[np.ndarray] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    rel_width: list[float] = field(default_factory=list)  # box width / page width
    centers: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # normalised (cx, cy)

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def from_split(cls, split, max_pixels: int | None = None) -> CropBank:
        """From a training :class:`~training.data.schema.DetectionSplit` (never valid or test: no leak)."""
        from training.data.images import decode_rgb

        index = split.class_index()
        bank = cls()
        centers = []
        for im in split.images:
            anns = split.annotations_for(im.id)
            if not anns:
                continue
            rgb = decode_rgb(im.file, max_pixels)
            h, w = rgb.shape[:2]
            for a in anns:
                x, y, bw, bh = a.bbox
                x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
                x1, y1 = min(w, int(round(x + bw))), min(h, int(round(y + bh)))
                if x1 - x0 < 4 or y1 - y0 < 4:
                    continue
                bank.crops.append(np.ascontiguousarray(rgb[y0:y1, x0:x1, ::-1]))
                bank.classes.append(index[a.category_id])
                bank.rel_width.append((x1 - x0) / w)
                centers.append(((x0 + x1) / 2 / w, (y0 + y1) / 2 / h))
        bank.centers = np.asarray(centers, np.float32).reshape(-1, 2)
        return bank


def _paper_normalised(crop: np.ndarray) -> np.ndarray:
    """The crop as a multiplicative ink layer in [0, 1]: 1 where its paper is, darker where its ink is."""
    f = crop.astype(np.float32)
    paper = np.percentile(f.reshape(-1, 3), 90, axis=0)  # most of a signature box is paper
    return np.clip(f / np.maximum(paper, 1.0), 0.0, 1.0)


def _free(box: np.ndarray, t: np.ndarray, gap: float) -> bool:
    """True when ``box`` stays ``gap`` px clear of every xyxy row of ``t``."""
    return not np.any(
        (box[0] < t[:, 2] + gap)
        & (box[2] > t[:, 0] - gap)
        & (box[1] < t[:, 3] + gap)
        & (box[3] > t[:, 1] - gap)
    )


def paste_crops(
    img: np.ndarray, boxes: np.ndarray, bank: CropBank, cfg: PasteConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste crops onto ``img`` (HxWx3 uint8, modified in place) away from ``boxes`` (N x 4 xyxy pixels).

    Returns the image, the pasted boxes (M x 4 xyxy) and their class indices (M,).
    """
    h, w = img.shape[:2]
    taken = np.asarray(boxes, np.float32).reshape(-1, 4)
    new_boxes: list[list[float]] = []
    new_cls: list[int] = []
    if not len(bank):
        return img, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    for _ in range(int(rng.integers(cfg.n[0], cfg.n[1] + 1))):
        k = int(rng.integers(len(bank)))
        crop = bank.crops[k]
        tw = bank.rel_width[k] * w * rng.uniform(*cfg.scale)
        th = tw * crop.shape[0] / crop.shape[1] * rng.uniform(*cfg.aspect)
        tw, th = int(round(min(tw, 0.9 * w))), int(round(min(th, 0.9 * h)))
        if tw < cfg.min_side_px or th < cfg.min_side_px:
            continue
        for _try in range(cfg.max_tries):
            if len(bank.centers) and rng.random() < cfg.position_prior_p:
                center = bank.centers[int(rng.integers(len(bank.centers)))]
                cx, cy = center + rng.normal(0, cfg.position_jitter, 2)
                x0, y0 = int(round(cx * w - tw / 2)), int(round(cy * h - th / 2))
            else:
                x0, y0 = int(rng.integers(0, w - tw + 1)), int(rng.integers(0, h - th + 1))
            x0, y0 = min(max(x0, 0), w - tw), min(max(y0, 0), h - th)
            box = np.array([x0, y0, x0 + tw, y0 + th], np.float32)
            if _free(box, taken, cfg.gap_px):
                break
        else:
            continue  # no free place on this page for this crop
        interp = cv2.INTER_AREA if tw < crop.shape[1] else cv2.INTER_LINEAR
        layer = _paper_normalised(cv2.resize(crop, (tw, th), interpolation=interp))
        if rng.random() < cfg.recolor_p:
            rgb = cfg.inks[int(rng.integers(len(cfg.inks)))]
            ink = np.asarray(rgb[::-1], np.float32) / 255.0  # BGR, like the page
            darkness = 1.0 - layer.mean(axis=2, keepdims=True)
            layer = 1.0 - darkness * (1.0 - ink)
        region = img[y0 : y0 + th, x0 : x0 + tw]
        region[:] = np.clip(region.astype(np.float32) * layer + 0.5, 0, 255).astype(np.uint8)
        taken = np.concatenate([taken, box[None]])
        new_boxes.append(box.tolist())
        new_cls.append(bank.classes[k])
    return img, np.asarray(new_boxes, np.float32).reshape(-1, 4), np.asarray(new_cls, np.int64)


class PastingLoader:
    """Wraps an ultralytics dataset's ``get_image_and_label``: pages come back with pasted crops.

    Installed on the dataset instance (so mosaic's extra pages get pastes too) and picklable for DataLoader
    workers. Randomness comes from Python's ``random``, which ultralytics seeds per worker, so runs repeat.
    """

    def __init__(self, load, bank: CropBank, cfg: PasteConfig):
        self.load, self.bank, self.cfg = load, bank, cfg

    def __call__(self, index: int) -> dict:
        label = self.load(index)
        if not len(self.bank) or random.random() >= self.cfg.p:
            return label
        from training.compat.ultralytics import Instances

        img = label["img"].copy()  # the loaded image may be ultralytics' buffer / RAM cache: never edit it
        h, w = img.shape[:2]
        inst = label["instances"]
        inst.convert_bbox("xyxy")
        inst.denormalize(w, h)
        rng = np.random.default_rng(random.getrandbits(64))
        img, boxes, cls = paste_crops(img, inst.bboxes, self.bank, self.cfg, rng)
        label["img"] = img
        if len(boxes):
            bboxes = np.concatenate([inst.bboxes, boxes]).astype(np.float32)
            label["instances"] = Instances(
                bboxes, inst.segments, inst.keypoints, bbox_format="xyxy", normalized=False
            )
            label["cls"] = np.concatenate(
                [label["cls"].reshape(-1, 1), cls.reshape(-1, 1).astype(np.float32)]
            )
        return label


def install(dataset, bank: CropBank, cfg: PasteConfig) -> None:
    """Make an ultralytics ``YOLODataset`` paste crops into every page it loads (idempotent)."""
    from training.compat.ultralytics import wrap_label_loading

    wrap_label_loading(dataset, PastingLoader, bank, cfg)
