"""Seeded synthetic document pages for pretraining a signature detector without downloaded weights.

A page holds what a detector must learn to *ignore* as much as what it must find: printed text in several fonts
(the DejaVu / STIX / Computer Modern faces matplotlib ships, so no font download), headings, tables, rules and
"Signature: ____" lines, logos, stamps, and handwriting that is not a signature (initials, dates, short notes).
Signatures are pen trajectories: cursive letters built from loops, arches, cups, ascenders and descenders,
a larger capital, slant, baseline drift, pressure, pen lifts and an optional flourish, placed where signatures
sit (above a signature line, at the foot of a letter, in a table cell).

The finished page is then *captured* the way real pages reach a detector: left clean, scanned (grey, slightly
rotated, often at fax resolution and binarised, with specks: the Tobacco800 look) or photographed (tinted paper
in perspective on a background, uneven light, blur, JPEG: the look of the Roboflow pages); some pages get a
certificate's coloured border and large title.

Labels are exact by construction: every signature is drawn on its own layer and its box is the bounding box of
that layer's ink as captured (moved by the scan's rotation or the photo's perspective, and only the strokes a
binarised scan kept). Page ``i`` of a set depends only on ``(seed, i)`` (``np.random.default_rng([seed, i])``).
The pages are written as a Roboflow-style COCO folder (``data=synthetic`` materialises them into the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training.data.coco import coco_ann, dump_coco
from training.fileio import publish_dir

# bump when the pages a (seed, index) produces change: it keys the materialised cache
GENERATOR_VERSION = 2
CLASS_NAME = "signature"
_WORDS = (  # noqa: SIM905 (one string: the words, in order, that rng.choice draws from)
    "agreement contract party hereby date total amount invoice payment terms conditions page section "
    "account received approved signed witness name address office department reference number copy "
    "director manager company limited schedule certificate records annual report notice client the of and "
    "for with to by on in this that shall be is are as per your our"
).split()


@dataclass(frozen=True)
class PageConfig:
    """What a page holds; counts are inclusive ``[min, max]``; sizes in pixels at the page size."""

    page_size: tuple[int, int] = (640, 640)
    signatures: tuple[int, int] = (1, 3)
    signature_width: tuple[int, int] = (70, 280)
    initials: tuple[int, int] = (0, 2)
    notes: tuple[int, int] = (0, 3)  # handwritten dates and short notes
    stamps: tuple[int, int] = (0, 1)
    tables_p: float = 0.35
    logo_p: float = 0.5
    text_blocks: tuple[int, int] = (2, 6)
    font_px: tuple[int, int] = (7, 15)
    blank_p: float = 0.08  # a page without signatures (only distractors)
    # Capture styles (generator version 2), off here (with all three at 0 a page is bit for bit the version-1
    # page); experiment=synthetic_pretrain sets 0.15 / 0.3 / 0.3, the pages the shipped yolov8n-synthetic.pt was
    # pretrained on. certificate_p: a decorative border and a large coloured title; scan_p: an office scan (grey,
    # slightly rotated, often fax resolution and binarised: Tobacco800); photo_p: a photograph (tinted paper in
    # perspective on a background, uneven light, blur, JPEG); the rest of the pages stay clean.
    certificate_p: float = 0.0
    scan_p: float = 0.0
    photo_p: float = 0.0

    @classmethod
    def from_cfg(cls, cfg) -> PageConfig:
        from training.overrides import settings_kwargs

        return cls(**settings_kwargs(cls, cfg, "data.synthetic.page"))


def _between(rng: np.random.Generator, bounds) -> int:
    """A count drawn from the inclusive ``[min, max]`` range ``bounds``."""
    return int(rng.integers(bounds[0], bounds[1] + 1))


@lru_cache(maxsize=1)
def _font_files() -> tuple[str, ...]:
    import matplotlib

    d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = (  # noqa: SIM905
        "DejaVuSans.ttf DejaVuSans-Bold.ttf DejaVuSans-Oblique.ttf DejaVuSerif.ttf DejaVuSerif-Bold.ttf "
        "DejaVuSerif-Italic.ttf DejaVuSansMono.ttf STIXGeneral.ttf STIXGeneralBol.ttf "
        "STIXGeneralItalic.ttf cmr10.ttf cmss10.ttf cmtt10.ttf"
    ).split()
    return tuple(str(d / n) for n in names if (d / n).is_file())


@lru_cache(maxsize=256)
def _font(index: int, size: int) -> ImageFont.ImageFont:
    files = _font_files()
    if not files:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(files[index % len(files)], size)


# -- handwriting -------------------------------------------------------------------------------------------
def _letter(rng: np.random.Generator, kind: str, n: int = 24) -> np.ndarray:
    """One cursive letter as points (x, y), x-height 1, baseline y=0, y up; it starts and ends on the baseline."""
    t = np.linspace(0, 1, n)
    w = rng.uniform(0.6, 1.1)
    if kind == "arch":  # n, m, h's hump
        x, y = w * t, np.sin(np.pi * t) * rng.uniform(0.8, 1.1)
    elif kind == "cup":  # u, w
        x, y = w * t, 0.9 * (1 - np.sin(np.pi * t))
    elif kind == "oval":  # o, a, d's bowl
        a = 2 * np.pi * t + np.pi / 2
        x, y = w / 2 * (1 + np.cos(a)) * 0.9 + 0.05 * t, 0.5 + 0.5 * np.sin(a)
    elif kind == "loop_up":  # l, b, h, k: an ascender loop
        h = rng.uniform(1.8, 2.6)
        x, y = w * t + 0.35 * w * np.sin(2 * np.pi * t), h * np.sin(np.pi * t)
    elif kind == "loop_down":  # g, j, y: a descender loop
        h = rng.uniform(1.2, 1.8)
        x, y = w * t - 0.35 * w * np.sin(2 * np.pi * t), -h * np.sin(np.pi * t)
    elif kind == "eye":  # e: a small loop
        x, y = w * t - 0.3 * w * np.sin(2 * np.pi * t), 0.7 * np.sin(np.pi * t)
    else:  # "zig": i, r, s, t - a spike
        x, y = w * t, np.interp(t, [0, 0.45, 1], [0, rng.uniform(0.7, 1.3), 0])
    return np.stack([x, y], 1)


_SMALL = ("arch", "cup", "oval", "eye", "zig", "arch", "oval", "loop_up", "loop_down")


def _capital(rng: np.random.Generator, n: int = 48) -> np.ndarray:
    """A large opening letter: a tall loop or oval with a lead-in stem, 2-3.5 x-heights high."""
    t = np.linspace(0, 1, n)
    h, w = rng.uniform(2.0, 3.5), rng.uniform(0.8, 1.8)
    if rng.random() < 0.5:
        a = 2 * np.pi * t * rng.uniform(1.0, 1.4) + np.pi
        x, y = w * (0.5 + 0.5 * np.cos(a)), h * (0.5 + 0.5 * np.sin(a))
    else:
        x, y = w * t + 0.4 * w * np.sin(2 * np.pi * t), h * np.sin(np.pi * t) ** 0.7
    return np.stack([x, y], 1)


def _smooth(pts: np.ndarray, k: int) -> np.ndarray:
    if len(pts) < 3 or k < 2:
        return pts
    kernel = np.ones(k) / k
    pad = np.pad(pts, ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    return np.stack([np.convolve(pad[:, i], kernel, mode="valid") for i in range(2)], 1)


def handwriting(
    rng: np.random.Generator,
    x_height: float,
    words: tuple[int, int] = (1, 2),
    letters: tuple[int, int] = (3, 8),
    capital_p: float = 0.8,
    flourish_p: float = 0.4,
    slant: tuple[float, float] = (0.1, 0.5),
    width: tuple[float, float] = (1.0, 2.6),
) -> np.ndarray:
    """Ink coverage in [0, 1] of a cursive pen trajectory (a signature, initials or a note)."""
    strokes: list[np.ndarray] = []
    x0 = 0.0
    for _ in range(_between(rng, words)):
        parts = [_capital(rng)] if rng.random() < capital_p else []
        parts += [_letter(rng, str(rng.choice(_SMALL))) for _ in range(_between(rng, letters))]
        word, cursor = [], x0
        for p in parts:
            word.append(p + [cursor - p[0, 0], 0])
            cursor += p[-1, 0] - p[0, 0] + rng.uniform(0.0, 0.25)
        w = np.concatenate(word)
        w[:, 1] += np.cumsum(rng.normal(0, 0.02, len(w)))  # baseline drift
        # pen lifts: a word may be split into pieces
        cuts = []
        if len(w) > 30:
            size = int(rng.integers(0, 3))
            cuts = sorted(rng.choice(np.arange(10, len(w) - 10), size=size, replace=False).tolist())
        strokes.extend(np.split(w, cuts))
        x0 = cursor + rng.uniform(0.6, 1.6)
    if rng.random() < flourish_p:  # an underline or a return stroke under the name
        t = np.linspace(0, 1, 40)
        fx = x0 * (0.05 + 0.95 * t) if rng.random() < 0.5 else x0 * (1 - 0.9 * t)
        fy = -rng.uniform(0.3, 1.0) + 0.4 * np.sin(np.pi * t) * rng.uniform(-1, 1)
        strokes.append(np.stack([fx, fy + 0 * t], 1))
    s = rng.uniform(*slant)
    pts_all = np.concatenate(strokes)
    lo, hi = pts_all.min(0), pts_all.max(0)
    lw = rng.uniform(*width)
    pad = lw + 2
    size = ((hi - lo) * x_height).astype(int)
    W = int(size[0] + size[1] * s + 2 * pad) + 1
    H = int(size[1] + 2 * pad) + 1
    canvas = np.zeros((H, W), np.uint8)
    for st in strokes:
        if len(st) < 2:
            continue
        p = (st - lo) * x_height
        p = _smooth(p + rng.normal(0, x_height * 0.04, p.shape), 3)
        px = p[:, 0] + p[:, 1] * s + pad
        py = H - 1 - (p[:, 1] + pad)
        pts = np.round(np.stack([px, py], 1) * 4).astype(np.int32)  # 2 fractional bits: smooth strokes
        thick = max(1, int(round(lw * rng.uniform(0.8, 1.2))))
        cv2.polylines(canvas, [pts], False, 255, thick, cv2.LINE_AA, shift=2)
    return canvas.astype(np.float32) / 255.0


# -- printed matter ----------------------------------------------------------------------------------------
def _sentence(rng: np.random.Generator, n: int) -> str:
    words = [str(rng.choice(_WORDS)) for _ in range(n)]
    if rng.random() < 0.3:
        words.insert(int(rng.integers(len(words) + 1)), str(int(rng.integers(1, 99999))))
    s = " ".join(words)
    return s[0].upper() + s[1:]


def _text_block(draw, rng, box, font_px, taken):
    x0, y0, x1, y1 = box
    font = _font(int(rng.integers(0, 64)), font_px)
    gray = int(rng.integers(0, 80))
    y = y0
    step = int(font_px * rng.uniform(1.25, 1.8))
    while y + font_px < y1:
        line = _sentence(rng, int(rng.integers(3, 14)))
        draw.text((x0, y), line, fill=(gray,) * 3, font=font)
        y += step
    taken.append((x0, y0, x1, y))


def _table(draw, rng, box, font_px):
    x0, y0, x1, y1 = box
    cols, rows = int(rng.integers(2, 6)), int(rng.integers(2, 8))
    xs, ys = np.linspace(x0, x1, cols + 1).astype(int), np.linspace(y0, y1, rows + 1).astype(int)
    gray, lw = int(rng.integers(0, 90)), int(rng.integers(1, 3))
    for x in xs:
        draw.line([(x, y0), (x, y1)], fill=(gray,) * 3, width=lw)
    for y in ys:
        draw.line([(x0, y), (x1, y)], fill=(gray,) * 3, width=lw)
    font = _font(int(rng.integers(0, 64)), font_px)
    for r in range(rows):
        for c in range(cols):
            if rng.random() < 0.7:
                text = str(rng.choice(_WORDS)) if rng.random() < 0.5 else f"{rng.uniform(0, 9999):.2f}"
                draw.text((xs[c] + 3, ys[r] + 2), text, fill=(gray,) * 3, font=font)
    return list(zip(xs[:-1], ys[:-1], xs[1:], ys[1:], strict=False))


def _logo(draw, rng, x, y, size):
    colour = tuple(int(c) for c in rng.integers(0, 200, 3))
    shape = int(rng.integers(3))
    if shape == 0:
        draw.ellipse([x, y, x + size, y + size], fill=colour)
    elif shape == 1:
        draw.rectangle([x, y, x + size, y + size * 0.7], fill=colour)
    else:
        draw.polygon([(x, y + size), (x + size / 2, y), (x + size, y + size)], fill=colour)
    font = _font(int(rng.integers(0, 64)), max(10, int(size * rng.uniform(0.4, 0.7))))
    name = " ".join(str(rng.choice(_WORDS)).upper() for _ in range(int(rng.integers(1, 3))))
    draw.text((x + size * 1.2, y + size * 0.1), name, fill=colour, font=font)


def _stamp(rng: np.random.Generator, d: int) -> np.ndarray:
    """A round or rectangular office stamp (ink coverage)."""
    im = Image.new("L", (d, d), 0)
    draw = ImageDraw.Draw(im)
    lw = max(1, d // 40)
    font = _font(int(rng.integers(0, 64)), max(7, d // 8))
    word = " ".join(str(rng.choice(_WORDS)).upper() for _ in range(int(rng.integers(1, 3))))
    if rng.random() < 0.5:
        draw.ellipse([lw, lw, d - lw - 1, d - lw - 1], outline=255, width=lw * 2)
        draw.ellipse([d * 0.18, d * 0.18, d * 0.82, d * 0.82], outline=255, width=lw)
        draw.text((d * 0.25, d * 0.42), word[:10], fill=255, font=font)
    else:
        draw.rectangle([lw, d * 0.25, d - lw - 1, d * 0.75], outline=255, width=lw * 2)
        draw.text((d * 0.08, d * 0.4), word[:12], fill=255, font=font)
    alpha = np.asarray(im.rotate(float(rng.uniform(-25, 25)), resample=Image.BICUBIC), np.float32) / 255.0
    return alpha * rng.uniform(0.5, 0.95)


# -- a page -----------------------------------------------------------------------------------------------
_INKS = np.array([(28, 58, 176), (25, 25, 30), (20, 40, 120), (60, 60, 70)], np.float32)  # RGB
_STAMP_INKS = np.array([(196, 28, 40), (28, 58, 176), (106, 40, 146)], np.float32)
# printed under signature lines
_CAPTIONS = ("Signature", "Signed", "Authorized signatory", "Witness", "Name", "Date")
# handwriting() settings of the distractors: initials and short notes (dates, remarks)
_INITIAL = dict(words=(1, 1), letters=(0, 1), capital_p=1.0, flourish_p=0.2)
_NOTE = dict(words=(1, 4), letters=(2, 6), capital_p=0.3, flourish_p=0.0, slant=(0.0, 0.3), width=(0.8, 1.8))


def _multiply(page: np.ndarray, alpha: np.ndarray, x: int, y: int, rgb) -> None:
    """Ink on paper: the layer multiplies the page (overlaps darken), clipped to the page."""
    H, W = page.shape[:2]
    h, w = alpha.shape
    ax0, ay0 = max(0, -x), max(0, -y)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[ay0 : ay0 + y1 - y0, ax0 : ax0 + x1 - x0, None]
    page[y0:y1, x0:x1] *= 1 - a * (1 - np.asarray(rgb, np.float32) / 255.0)


def _free(box, taken, gap=4) -> bool:
    return all(
        box[2] + gap <= t[0] or box[0] >= t[2] + gap or box[3] + gap <= t[1] or box[1] >= t[3] + gap
        for t in taken
    )


def _place(
    rng: np.random.Generator,
    w: int,
    h: int,
    ow: int,
    oh: int,
    taken: list,
    near: tuple | None = None,
    gap: int = 0,
    tries: int = 60,
) -> tuple[int, int] | None:
    """Top-left corner for an ``ow x oh`` object at least ``gap`` px from everything in ``taken`` except ``near``
    (which it overlaps when given); None when ``tries`` random spots all collide."""
    if ow >= w or oh >= h:
        return None
    others = [t for t in taken if t is not near]
    for _ in range(tries):
        if near is not None:
            x0, y0, x1, y1 = near
            x = int(np.clip((x0 + x1) / 2 - ow * rng.uniform(0.2, 0.8), 0, w - ow))
            y = int(np.clip((y0 + y1) / 2 - oh * rng.uniform(0.2, 0.8), 0, h - oh))
        else:
            x, y = int(rng.integers(0, w - ow)), int(rng.integers(0, h - oh))
        if _free((x, y, x + ow, y + oh), others, gap):
            return x, y
    return None


def _certificate(draw, rng, W: int, H: int, y: int, s: float, printed: list) -> int:
    """A diploma / certificate look: a coloured double border and a large coloured title; returns the next y."""
    colour = tuple(int(c) for c in rng.integers(0, 170, 3))
    m, lw = int(W * rng.uniform(0.015, 0.04)), int(rng.integers(2, 7))
    draw.rectangle([m, m, W - m - 1, H - m - 1], outline=colour, width=lw)
    if rng.random() < 0.6:
        g = lw + int(rng.integers(2, 6))
        draw.rectangle([m + g, m + g, W - m - g - 1, H - m - g - 1], outline=colour, width=max(1, lw // 2))
    fpx = int(rng.uniform(22, 44) * s)
    font = _font(int(rng.integers(0, 64)), fpx)
    title = " ".join(str(rng.choice(_WORDS)).capitalize() for _ in range(int(rng.integers(1, 4))))
    tw = draw.textlength(title, font=font)
    x0, y0 = max(m, int((W - tw) / 2)), max(y, m + lw + int(8 * s))
    draw.text((x0, y0), title, fill=colour, font=font)
    printed.append((x0, y0, int(x0 + tw), y0 + fpx))
    return y0 + fpx + int(rng.uniform(10, 30) * s)


def _capture_geometry(rng: np.random.Generator, style: str, W: int, H: int) -> np.ndarray:
    """The 3x3 map from the page to the captured image: a scan's small rotation, or a photo's perspective."""
    if style == "scan":
        A = cv2.getRotationMatrix2D(
            (W / 2, H / 2), float(rng.uniform(-2.0, 2.0)), float(rng.uniform(0.92, 1.0))
        )
        return np.vstack([A, [0.0, 0.0, 1.0]])
    if style == "photo":
        k = rng.uniform(0.55, 0.95)  # the page's share of the frame, its centre anywhere the page still fits
        cx, cy = W * rng.uniform(k / 2, 1 - k / 2), H * rng.uniform(k / 2, 1 - k / 2)
        src = np.float32([[0, 0], [W, 0], [W, H], [0, H]])
        dst = np.float32([[cx + k * (x - W / 2), cy + k * (y - H / 2)] for x, y in src])
        dst += rng.uniform(-0.04, 0.04, (4, 2)).astype(np.float32) * np.float32([W, H])
        return cv2.getPerspectiveTransform(src, dst)
    return np.eye(3)


def _warp(img: np.ndarray, M: np.ndarray, W: int, H: int, border: float = 0.0):
    return cv2.warpPerspective(img, M, (W, H), flags=cv2.INTER_LINEAR, borderValue=border)


def _signature_masks(layers, M: np.ndarray | None, W: int, H: int) -> list[np.ndarray]:
    """Each signature's ink (coverage > 0.25) on the captured frame: its layer moved by the capture geometry
    ``M`` (None: the page as drawn)."""
    masks = []
    for alpha, x, y in layers:
        h, w = alpha.shape
        if M is None:
            m = np.zeros((H, W), bool)
            m[y : y + h, x : x + w] = alpha > 0.25
        else:
            full = np.zeros((H, W), np.float32)
            full[y : y + h, x : x + w] = alpha
            m = _warp(full, M, W, H) > 0.25
        masks.append(m)
    return masks


def _tight_boxes(masks: list[np.ndarray]) -> tuple[list[np.ndarray], list[list[int]]]:
    """The non-empty masks and their tight boxes ``[x0, y0, x1, y1]`` (exclusive ends)."""
    kept, boxes = [], []
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(xs):
            kept.append(m)
            boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return kept, boxes


def _capture(rng: np.random.Generator, page: np.ndarray, layers, cfg: PageConfig):
    """How the page reaches the detector: clean, an office scan or a photograph (``cfg.scan_p`` / ``photo_p``).

    Written here rather than as albumentations transforms: the labels must stay the exact bounds of each
    signature's *visible* ink (a binarised scan drops faint strokes, a perspective moves them), which needs the
    per-signature ink layers only the generator has. The recipe's scan effects still apply on top in training.
    Returns the page (uint8 RGB), the boxes and the union of the signatures' visible ink.
    """
    H, W = page.shape[:2]
    u = rng.random() if cfg.scan_p + cfg.photo_p > 0 else 1.0  # no draw when off: version-1 pages
    style = "scan" if u < cfg.scan_p else "photo" if u < cfg.scan_p + cfg.photo_p else "clean"
    M = _capture_geometry(rng, style, W, H) if style != "clean" else None
    masks, boxes = _tight_boxes(_signature_masks(layers, M, W, H))
    if any(not _free(a, boxes[i + 1 :], gap=0) for i, a in enumerate(boxes)):
        # the geometry would make two labels overlap: keep the page flat (the drawn boxes are apart)
        M = np.eye(3)
        masks, boxes = _tight_boxes(_signature_masks(layers, None, W, H))
    visible = None
    if style == "scan":
        grey = page @ np.float32([0.299, 0.587, 0.114])
        paper = float(np.median(grey))
        grey = _warp(grey, M, W, H, border=paper)
        if rng.random() < 0.5:  # fax / low-dpi resolution
            f = rng.uniform(0.45, 0.8)
            small = cv2.resize(grey, (int(W * f), int(H * f)), interpolation=cv2.INTER_AREA)
            grey = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.7:  # binarised: ink is what falls under the threshold
            visible = grey < paper * rng.uniform(0.6, 0.8)  # keeps a stroke's core, drops its faint edges
            grey = np.where(visible, rng.uniform(0, 40), rng.uniform(235, 255)).astype(np.float32)
            specks = rng.random((H, W)) < rng.uniform(0, 0.0004)
            grey[cv2.dilate(specks.astype(np.uint8), np.ones((2, 2), np.uint8)) > 0] = 20.0
        out = np.repeat(grey[..., None], 3, axis=2)
    elif style == "photo":
        page = page * np.float32([1.0, rng.uniform(0.92, 1.0), rng.uniform(0.78, 0.97)])  # paper tint
        warped = _warp(page, M, W, H)
        cover = _warp(np.ones((H, W), np.float32), M, W, H)[..., None]
        bg = rng.uniform(20, 200, 3).astype(np.float32) * (
            0.75 + 0.5 * cv2.resize(rng.random((3, 3)).astype(np.float32), (W, H))[..., None]
        )
        out = warped * cover + bg * (1 - cover)
        light = 1 - rng.uniform(0.0, 0.4) * cv2.resize(rng.random((3, 3)).astype(np.float32), (W, H))
        out = out * light[..., None] + rng.normal(0, rng.uniform(1, 6), (H, W, 1))
        sigma = rng.uniform(0.0, 1.2)
        if sigma > 0.3:
            out = cv2.GaussianBlur(out, (0, 0), sigma)
    else:
        out = page
    out = np.clip(out, 0, 255).astype(np.uint8)
    if style != "clean" and rng.random() < 0.6:
        _, enc = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 90))])
        out = cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1].copy()
    if visible is not None:  # only the strokes the binarisation kept are labelled
        masks, boxes = _tight_boxes([m & visible for m in masks])
    ink = np.zeros((H, W), bool)
    for m in masks:
        ink |= m
    return out, boxes, ink


@dataclass
class _Layout:
    """The page being printed: what draws on it, its size and scale, and what the print left for later."""

    rng: np.random.Generator
    cfg: PageConfig
    draw: ImageDraw.ImageDraw
    W: int
    H: int
    s: float  # the page's short side / 640
    margin: int
    # regions with print: signatures may overlap them slightly, handwriting avoids most
    printed: list[tuple] = field(default_factory=list)
    anchors: list[tuple[int, int]] = field(default_factory=list)  # (x, y) spots where a signature belongs


def _header(lay: _Layout, y: int) -> int:
    """An optional logo, then (certificate pages) a border and a title; returns the next y."""
    rng, cfg, s, margin = lay.rng, lay.cfg, lay.s, lay.margin
    if rng.random() < cfg.logo_p:
        size = int(rng.uniform(20, 50) * s)
        _logo(lay.draw, rng, margin, y, size)
        lay.printed.append((margin, y, margin + size * 5, y + size))
        y += size + int(10 * s)
    if cfg.certificate_p > 0 and rng.random() < cfg.certificate_p:  # no draw when off: version-1 pages
        y = _certificate(lay.draw, rng, lay.W, lay.H, y, s, lay.printed)
    return y


def _block(lay: _Layout, y: int, n_blocks: int) -> int:
    """A table (its wide cells may become anchors) or a text block at ``y``; returns the next y."""
    rng, s, W, H, margin = lay.rng, lay.s, lay.W, lay.H, lay.margin
    fpx = int(_between(rng, lay.cfg.font_px) * s)
    if rng.random() < lay.cfg.tables_p / max(1, n_blocks / 2):
        box = (margin, y, W - margin, min(int(H * 0.95), y + int(rng.uniform(0.12, 0.3) * H)))
        lay.printed.append(box)
        for c in _table(lay.draw, rng, box, fpx):
            if rng.random() < 0.15 and c[2] - c[0] > 40 * s:
                lay.anchors.append(((c[0] + c[2]) // 2, c[3] - 2))
        return box[3] + int(rng.uniform(8, 30) * s)
    h = int(rng.uniform(0.05, 0.22) * H)
    x1 = W - margin if rng.random() < 0.8 else int(W * rng.uniform(0.45, 0.7))
    _text_block(lay.draw, rng, (margin, y, x1, min(int(H * 0.95), y + h)), fpx, lay.printed)
    return lay.printed[-1][3] + int(rng.uniform(10, 45) * s)


def _signature_line(lay: _Layout, y: int) -> int:
    """A signature line with its printed caption below ``y`` (an anchor) when it fits; returns the next y."""
    rng, s, W, H = lay.rng, lay.s, lay.W, lay.H
    lx0 = int(rng.uniform(lay.margin, W * 0.55))
    lx1 = min(W - lay.margin, lx0 + int(rng.uniform(120, 260) * s))
    ly = y + int(rng.uniform(25, 50) * s)
    if ly >= H - 20 * s:
        return y
    lay.draw.line([(lx0, ly), (lx1, ly)], fill=(40, 40, 40), width=max(1, int(s)))
    fpx = int(_between(rng, lay.cfg.font_px) * s)
    caption = str(rng.choice(_CAPTIONS))
    font = _font(int(rng.integers(0, 64)), fpx)
    lay.draw.text((lx0, ly + 3), caption, fill=(40, 40, 40), font=font)
    lay.anchors.append(((lx0 + lx1) // 2, ly + int(rng.uniform(-2, 6) * s)))
    lay.printed.append((lx0, ly, lx1, ly + fpx + 4))
    return ly + fpx + int(rng.uniform(15, 40) * s)


def _print_page(rng: np.random.Generator, cfg: PageConfig, s: float) -> tuple[np.ndarray, list]:
    """The printed page (HxWx3 float RGB, unevenly lit paper) and its anchors for signatures."""
    W, H = cfg.page_size
    base = rng.uniform(225, 253)
    paper = Image.new("RGB", (W, H), tuple(int(base + d) for d in rng.uniform(-5, 3, 3)))
    lay = _Layout(rng, cfg, ImageDraw.Draw(paper), W, H, s, margin=int(W * rng.uniform(0.04, 0.1)))
    y = _header(lay, int(H * rng.uniform(0.02, 0.06)))
    n_blocks = _between(rng, cfg.text_blocks)
    for _ in range(n_blocks):
        if y > H * 0.85:
            break
        y = _block(lay, y, n_blocks)
        if rng.random() < 0.45 and y < H * 0.92:
            y = _signature_line(lay, y)
    page = np.asarray(paper, np.float32).copy()
    page -= rng.uniform(0, 10) * cv2.resize(rng.random((4, 4)).astype(np.float32), (W, H))[..., None]
    return page, lay.anchors


def _signature_ink(rng: np.random.Generator, cfg: PageConfig, s: float) -> np.ndarray | None:
    """One signature's ink coverage cropped to its ink, or None when it left no ink."""
    xh = rng.uniform(*cfg.signature_width) * s / rng.uniform(6, 14)
    alpha = handwriting(rng, xh, words=(1, 2), letters=(3, 8), capital_p=0.85, flourish_p=0.45)
    alpha *= rng.uniform(0.65, 1.0) * (
        0.8 + 0.2 * cv2.resize(rng.random((3, 3)).astype(np.float32), alpha.shape[::-1])
    )
    ys, xs = np.nonzero(alpha > 0.25)
    if len(xs) == 0:
        return None
    return alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _signature_box(rng, w: int, h: int, W: int, H: int, s: float, anchors: list, taken: list) -> tuple | None:
    """Where a ``w x h`` signature goes: mostly at an anchor, else in the lower part of the page, apart from
    the other signatures; None when 30 tries all collide."""
    for _try in range(30):
        if anchors and rng.random() < 0.7:
            ax, ay = anchors[int(rng.integers(len(anchors)))]
            x, yy = int(ax - w * rng.uniform(0.3, 0.7)), int(ay - h * rng.uniform(0.6, 1.0))
        else:
            x = int(rng.integers(0, W - w))
            yy = int(rng.integers(int(H * 0.3), H - h)) if H - h > H * 0.3 else 0
        x, yy = int(np.clip(x, 0, W - w)), int(np.clip(yy, 0, H - h))
        box = (x, yy, x + w, yy + h)
        if _free(box, taken, int(6 * s)):
            return box
    return None


def _sign(rng, cfg: PageConfig, page: np.ndarray, anchors: list, s: float) -> tuple[list, list]:
    """Draw the signatures on ``page``: each one's ink layer with its top-left corner, and their boxes."""
    H, W = page.shape[:2]
    layers: list[tuple[np.ndarray, int, int]] = []  # each signature's ink coverage and its top-left corner
    taken: list[tuple] = []
    n_sig = 0 if rng.random() < cfg.blank_p else _between(rng, cfg.signatures)
    ink = _INKS[int(rng.integers(len(_INKS)))]
    for _ in range(n_sig):
        alpha = _signature_ink(rng, cfg, s)
        if alpha is None:
            continue
        h, w = alpha.shape
        if w >= W or h >= H:
            continue
        box = _signature_box(rng, w, h, W, H, s, anchors, taken)
        if box is None:
            continue
        x, yy = box[:2]
        _multiply(page, alpha, x, yy, ink if rng.random() < 0.8 else _INKS[int(rng.integers(len(_INKS)))])
        layers.append((alpha, x, yy))
        taken.append(box)
    return layers, taken


def _distract(rng, cfg: PageConfig, page: np.ndarray, taken: list, s: float) -> None:
    """Draw the handwriting and stamps that are not signatures on ``page``, apart from everything in ``taken``."""
    H, W = page.shape[:2]
    # distractors: never labelled, kept off the signatures so every label box holds one signature only
    # (ink coverage, the inks it is drawn in): initials, notes, stamps
    distract = [
        (handwriting(rng, rng.uniform(5, 10) * s, **_INITIAL), _INKS)
        for _ in range(_between(rng, cfg.initials))
    ]
    distract += [
        (handwriting(rng, rng.uniform(3.5, 7) * s, **_NOTE), _INKS) for _ in range(_between(rng, cfg.notes))
    ]
    distract += [
        (_stamp(rng, int(rng.uniform(70, 150) * s)), _STAMP_INKS) for _ in range(_between(rng, cfg.stamps))
    ]
    for alpha, inks in distract:
        h, w = alpha.shape
        pos = _place(rng, W, H, w, h, taken, gap=int(4 * s), tries=30)
        if pos is None:
            continue
        x, yy = pos
        _multiply(page, alpha, x, yy, inks[int(rng.integers(len(inks)))])
        taken.append((x, yy, x + w, yy + h))


def generate_page(
    rng: np.random.Generator, cfg: PageConfig = PageConfig()
) -> tuple[np.ndarray, list, np.ndarray]:
    """One page (HxWx3 uint8 RGB), its signature boxes ``[x0, y0, x1, y1]`` (exclusive ends, pixels) and the
    signatures' ink mask (HxW bool: where a signature put visible ink, what the boxes are the bounds of)."""
    W, H = cfg.page_size
    s = min(W, H) / 640
    page, anchors = _print_page(rng, cfg, s)
    layers, taken = _sign(rng, cfg, page, anchors, s)
    _distract(rng, cfg, page, taken, s)
    page += rng.normal(0, rng.uniform(0.5, 3.0), page.shape[:2])[..., None]
    return _capture(rng, page, layers, cfg)


def write_split(out: Path, n: int, seed: int, cfg: PageConfig, split_offset: int) -> None:
    """``n`` pages as ``out/_annotations.coco.json`` + PNGs; page ``i`` from ``default_rng([seed, offset + i])``."""
    out.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img, boxes, _ = generate_page(np.random.default_rng([seed, split_offset + i]), cfg)
        name = f"synthetic_{split_offset + i:06d}.png"
        Image.fromarray(img).save(out / name, compress_level=1)
        images.append({"id": i + 1, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
        for x0, y0, x1, y1 in boxes:
            anns.append(coco_ann(len(anns) + 1, i + 1, 1, [x0, y0, x1 - x0, y1 - y0]))
    cats = [{"id": 1, "name": CLASS_NAME, "supercategory": "mark"}]
    dump_coco(out / "_annotations.coco.json", images, anns, cats)


def materialize(syn_cfg, splits: dict, cache: Path) -> Path:
    """Generate (once) the pages ``data=synthetic`` describes into the cache; returns the COCO root.

    Keyed by the generator version, seed, page counts and page settings: the same settings reuse the folder, any
    change writes a new one. Valid pages use indices after the train ones, so the splits never share a page.
    """
    page = PageConfig.from_cfg(syn_cfg.get("page"))
    counts = {k: int(v) for k, v in dict(syn_cfg.pages).items()}
    seed = int(syn_cfg.seed)
    key = json.dumps(
        {"v": GENERATOR_VERSION, "seed": seed, "pages": counts, "page": asdict(page)}, sort_keys=True
    )
    root = cache / "synthetic" / hashlib.sha256(key.encode()).hexdigest()[:20]
    if (root / "DONE").is_file():
        return root
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    offset = 0
    for split in ("train", "val", "test"):
        if split in counts:
            write_split(tmp / str(splits.get(split, split)), counts[split], seed, page, offset)
            offset += 10**6  # disjoint page indices per split
    (tmp / "DONE").write_text(key, encoding="utf-8")
    return publish_dir(tmp, root)
