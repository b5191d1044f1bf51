"""Stage 1 of the two-stage pipeline: candidate regions from coloured ink.

Each ink colour gets an HSV mask (ranges in config, OpenCV's H in [0, 180)); morphology closes the gaps between
strokes, ridges and ring letters; external contours become boxes, filtered by area and aspect. Masks are kept
apart per colour so that a red stamp over a blue signature stays two candidates. A trained signature detector's
boxes can be added as extra candidates (black-ink signatures have no colour to find).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Region:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in page pixels
    source: str  # "colour:<name>" or "detector"
    score: float = 1.0


def colour_mask(hsv: np.ndarray, ranges) -> np.ndarray:
    """Union of ``cv2.inRange`` over ``[[lo], [hi]]`` HSV ranges."""
    mask = np.zeros(hsv.shape[:2], np.uint8)
    for lo, hi in ranges:
        mask |= cv2.inRange(hsv, np.asarray(lo, np.uint8), np.asarray(hi, np.uint8))
    return mask


def _overlap(a, b, px: int = 0, py: int = 0) -> bool:
    return a[0] - px < b[2] and b[0] - px < a[2] and a[1] - py < b[3] and b[1] - py < a[3]


def _merge(boxes: list[tuple[int, int, int, int]], px: int, py: int) -> list[tuple[int, int, int, int]]:
    """Union boxes closer than ``px`` horizontally and ``py`` vertically until none are (the pen lifts between
    the words of a signature leave horizontal gaps)."""
    boxes = list(boxes)
    changed = True
    while changed:
        changed = False
        out: list[tuple[int, int, int, int]] = []
        for b in boxes:
            for i, o in enumerate(out):
                if _overlap(b, o, px, py):
                    out[i] = (min(b[0], o[0]), min(b[1], o[1]), max(b[2], o[2]), max(b[3], o[3]))
                    changed = True
                    break
            else:
                out.append(b)
        boxes = out
    return boxes


def box_iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def propose(image: np.ndarray, cfg, extra: list[Region] | None = None) -> list[Region]:
    """Candidate regions of an RGB uint8 page.

    ``cfg``: ``model.proposals`` (conf/model/resnet18-classifier.yaml, schema ``training.config.Proposals``):
    ``colours`` {name: HSV ranges in OpenCV units}, ``close_frac`` (closing kernel as a fraction of the page's
    short side), ``min_area_frac`` / ``max_area_frac`` (box area over page area), ``max_aspect``,
    ``merge_x_frac`` / ``merge_y_frac`` (boxes of one colour closer than this merge), ``dedup_iou`` (across
    colours).
    ``extra``: more candidates (a detector's boxes), de-duplicated against the colour ones.
    """
    h, w = image.shape[:2]
    short = min(h, w)
    k = max(3, int(round(cfg.close_frac * short)) | 1)
    min_area, max_area = cfg.min_area_frac * h * w, cfg.max_area_frac * h * w
    merge_x, merge_y = int(round(cfg.merge_x_frac * short)), int(round(cfg.merge_y_frac * short))
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    regions: list[Region] = []
    for name, ranges in cfg.colours.items():
        mask = colour_mask(hsv, ranges)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))  # specks of noise
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes = []
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            boxes.append((x, y, x + bw, y + bh))
        for b in _merge(boxes, merge_x, merge_y):
            bw, bh = b[2] - b[0], b[3] - b[1]
            if not (min_area <= bw * bh <= max_area):
                continue
            if max(bw, bh) / max(1, min(bw, bh)) > cfg.max_aspect:
                continue
            regions.append(Region(b, f"colour:{name}"))
    # one object that matches two neighbouring hue ranges (purple ink read partly as blue) is one candidate
    regions.sort(key=lambda r: -(r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))
    kept: list[Region] = []
    for r in regions + list(extra or []):
        if all(box_iou(r.box, o.box) < cfg.dedup_iou for o in kept):
            kept.append(r)
    return kept


def crop(image: np.ndarray, box, context: float = 0.08) -> np.ndarray:
    """The box plus ``context`` of its size on each side, clipped to the page."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    px, py = (x1 - x0) * context, (y1 - y0) * context
    xa, ya = max(0, int(x0 - px)), max(0, int(y0 - py))
    xb, yb = min(w, int(np.ceil(x1 + px))), min(h, int(np.ceil(y1 + py)))
    return image[ya:yb, xa:xb]
