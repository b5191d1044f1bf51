"""Seeded generator of document pages with coloured stamps, thumbprints and signatures, with exact labels.

Stamps and thumbprints have no public data reachable offline, so the classifier trains on these (plus real
signature crops). Every object is rendered on its own transparent layer, rotated, faded and broken up, then
multiplied onto the page like ink on paper; its label box is the bounding box of the layer's visible ink, so the
labels are exact by construction. The same pages serve as COCO detection data (:func:`write_pages`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training.cli import ConfigError, UserError
from training.data.coco import coco_ann, dump_coco
from training.data.synthetic import _between, _multiply, _place

CLASSES = ("signature", "stamp", "thumb")
INKS: dict[str, tuple[int, int, int]] = {
    "red": (196, 28, 40),
    "blue": (28, 58, 176),
    "purple": (106, 40, 146),
    "black": (28, 28, 34),
}
WORDS = tuple("APPROVED RECEIVED NOTARY PAID COPY CERTIFIED OFFICIAL REGISTRY SEAL VERIFIED".split())  # noqa: SIM905


@dataclass(frozen=True)
class SynthConfig:
    """What a generated page holds. Counts are inclusive ``[min, max]`` per page."""

    page_size: tuple[int, int] = (640, 640)  # width, height
    signatures: tuple[int, int] = (1, 2)
    stamps: tuple[int, int] = (0, 2)
    thumbs: tuple[int, int] = (0, 2)
    signature_inks: tuple[str, ...] = ("blue", "black")
    stamp_inks: tuple[str, ...] = ("red", "blue", "purple")
    thumb_inks: tuple[str, ...] = ("purple", "blue", "red")
    # probability that a stamp is placed over a signature (the two then overlap)
    overlap_p: float = 0.3
    # stamps: diameter / long side in pixels at a 640 px page (scaled with the page)
    stamp_size: tuple[int, int] = (90, 170)
    thumb_size: tuple[int, int] = (55, 85)
    signature_width: tuple[int, int] = (110, 230)
    max_rotation: float = 30.0
    fade: tuple[float, float] = (0.55, 1.0)  # ink opacity
    partial_ink_p: float = 0.5  # probability of patchy ink (gaps in the impression)
    text_lines: tuple[int, int] = (6, 16)
    # pixels (at 640) kept free between objects that do not overlap on purpose
    min_gap: int = 28  # printed (black) text lines: clutter that is not a candidate

    @classmethod
    def from_cfg(cls, cfg) -> SynthConfig:
        """From a mapping (a Hydra node); lists become tuples, unknown keys fail."""
        from training.overrides import settings_kwargs

        raw = settings_kwargs(cls, cfg, "synthetic-page")
        for k in ("signature_inks", "stamp_inks", "thumb_inks"):
            bad = [i for i in raw.get(k, ()) if i not in INKS]
            if bad:
                raise ConfigError(f"synthetic.{k}: unknown inks {bad}; valid: {sorted(INKS)}")
        return cls(**raw)


@dataclass
class PlantedObject:
    label: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), page pixels
    ink: str


@dataclass
class SynthPage:
    image: np.ndarray  # HxWx3 uint8 RGB
    objects: list[PlantedObject] = field(default_factory=list)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, int(size)))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (bicubic upscaling of a coarse random grid)."""
    grid = rng.random((max(2, cells), max(2, cells))).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _ink_layer(alpha: np.ndarray, rng: np.random.Generator, cfg: SynthConfig, patchy: bool) -> np.ndarray:
    """Fade and (optionally) break up an ink coverage map in [0, 1]."""
    h, w = alpha.shape
    out = alpha * rng.uniform(*cfg.fade)
    # uneven pressure everywhere, holes where the stamp pad was dry
    out *= 0.75 + 0.25 * _smooth_noise(rng, h, w, 6)
    if patchy:
        holes = _smooth_noise(rng, h, w, 5) > rng.uniform(0.72, 0.85)
        out[holes] *= 0.1
    return np.clip(out, 0, 1)


def _rotate(alpha: np.ndarray, angle: float) -> np.ndarray:
    im = Image.fromarray((alpha * 255).astype(np.uint8))
    return np.asarray(im.rotate(angle, resample=Image.BICUBIC, expand=True), dtype=np.float32) / 255.0


def _round_stamp(rng: np.random.Generator, d: int) -> np.ndarray:
    im = Image.new("L", (d, d), 0)
    draw = ImageDraw.Draw(im)
    lw = max(2, d // 35)
    draw.ellipse([1, 1, d - 2, d - 2], outline=255, width=lw)
    inner = int(d * rng.uniform(0.22, 0.3))
    draw.ellipse([inner, inner, d - inner, d - inner], outline=255, width=max(1, lw - 1))
    # ring text, one rotated glyph at a time
    text = " * ".join(rng.choice(WORDS, size=2, replace=False)) + " * "
    fsize = max(7, int(d * 0.1))
    radius = (d / 2 - lw - fsize * 0.75 + d / 2 - inner) / 2 + fsize * 0.2
    font = _font(fsize)
    c = d / 2
    for i, ch in enumerate(text):
        theta = 2 * math.pi * i / len(text) - math.pi / 2
        g = Image.new("L", (fsize * 2, fsize * 2), 0)
        ImageDraw.Draw(g).text((fsize // 2, fsize // 3), ch, fill=255, font=font)
        g = g.rotate(-math.degrees(theta) - 90, resample=Image.BICUBIC)
        x, y = c + radius * math.cos(theta) - fsize, c + radius * math.sin(theta) - fsize
        im.paste(255, (int(x), int(y)), g)
    # centre: a star or a short word
    if rng.random() < 0.5:
        r = (d / 2 - inner) * 0.55
        star = [(r if k % 2 == 0 else r * 0.45, math.pi * k / 5 - math.pi / 2) for k in range(10)]
        draw.polygon([(c + rk * math.cos(a), c + rk * math.sin(a)) for rk, a in star], fill=255)
    else:
        word = str(rng.choice(WORDS))[:5]
        f = _font(max(7, int(d * 0.12)))
        tw = draw.textlength(word, font=f)
        draw.text((c - tw / 2, c - d * 0.07), word, fill=255, font=f)
    return np.asarray(im, dtype=np.float32) / 255.0


def _rect_stamp(rng: np.random.Generator, w: int) -> np.ndarray:
    h = int(w * rng.uniform(0.35, 0.6))
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    lw = max(2, w // 60)
    draw.rectangle([1, 1, w - 2, h - 2], outline=255, width=lw)
    if rng.random() < 0.6:
        g = lw + 3
        draw.rectangle([g, g, w - 1 - g, h - 1 - g], outline=255, width=max(1, lw - 1))
    lines = int(rng.integers(1, 4))
    fsize = max(7, int(h / (lines + 1.2)))
    font = _font(fsize)
    for i in range(lines):
        word = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 3))))
        if i > 0 and rng.random() < 0.5:
            word = f"{int(rng.integers(1, 29)):02d}.{int(rng.integers(1, 13)):02d}.{int(rng.integers(1990, 2030))}"
        tw = draw.textlength(word, font=font)
        scale = min(1.0, (w - 4 * lw - 6) / max(tw, 1))
        f = _font(fsize * scale) if scale < 1 else font
        tw = draw.textlength(word, font=f)
        y = (h - lines * fsize) / 2 + i * fsize
        draw.text(((w - tw) / 2, y), word, fill=255, font=f)
    return np.asarray(im, dtype=np.float32) / 255.0


def _thumb(rng: np.random.Generator, w: int) -> np.ndarray:
    h = int(w * rng.uniform(1.2, 1.45))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.35, 0.55)
    # warped distance from the core gives whorl/loop-like ridges; the warp bends them irregularly
    warp = (_smooth_noise(rng, h, w, 4) - 0.5) * rng.uniform(6, 14)
    r = np.sqrt(((xx - cx) * rng.uniform(0.9, 1.3)) ** 2 + (yy - cy) ** 2) + warp
    if rng.random() < 0.5:  # loop: bend the upper ridges into arches
        r += np.clip(cy - yy, 0, None) * rng.uniform(0.2, 0.6)
    period = rng.uniform(5.0, 7.5) * w / 70
    ridges = (np.sin(2 * np.pi * r / period) > rng.uniform(-0.2, 0.2)).astype(np.float32)
    env = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    edge = 1 - np.clip((env - 0.75) / 0.25, 0, 1)
    edge *= _smooth_noise(rng, h, w, 5) > 0.15  # pressed unevenly: parts of the rim missing
    return ridges * edge


def _signature(rng: np.random.Generator, w: int) -> np.ndarray:
    h = int(w * rng.uniform(0.3, 0.5))
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    lw = int(rng.integers(2, 4))
    n = int(rng.integers(12, 26))
    xs = np.linspace(0.06 * w, 0.94 * w, n) + rng.normal(0, w * 0.02, n)
    ys = h / 2 + rng.normal(0, h * 0.22, n)
    # a few pen-up gaps split the signature into strokes; each stroke is a smoothed polyline
    cuts = sorted(rng.choice(np.arange(3, n - 3), size=int(rng.integers(0, 3)), replace=False).tolist())
    for seg in np.split(np.arange(n), cuts):
        if len(seg) < 2:
            continue
        t = np.linspace(0, 1, len(seg) * 8)
        px = np.interp(t, np.linspace(0, 1, len(seg)), xs[seg])
        py = np.interp(t, np.linspace(0, 1, len(seg)), ys[seg])
        py = np.convolve(np.pad(py, 3, mode="edge"), np.ones(7) / 7, mode="valid")
        # loops: a small circular excursion superimposed on the path
        py += np.sin(t * len(seg) * rng.uniform(1.5, 3.0)) * h * rng.uniform(0.05, 0.18)
        pts = list(zip(np.clip(px, 2, w - 3).tolist(), np.clip(py, 2, h - 3).tolist(), strict=True))
        draw.line(pts, fill=255, width=lw, joint="curve")
    if rng.random() < 0.5:  # underline flourish
        y = h * rng.uniform(0.75, 0.9)
        draw.line([(w * 0.1, y), (w * 0.55, y + h * 0.05), (w * 0.92, y - h * 0.04)], fill=255, width=lw)
    return np.asarray(im, dtype=np.float32) / 255.0


def _paper(rng: np.random.Generator, w: int, h: int, cfg: SynthConfig) -> np.ndarray:
    base = rng.uniform(232, 252)
    tint = rng.uniform(-4, 4, size=3)
    page = np.full((h, w, 3), base, np.float32) + tint
    page += rng.normal(0, 2.0, (h, w, 1))
    page -= _smooth_noise(rng, h, w, 4)[..., None] * rng.uniform(0, 10)
    im = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    fsize = max(7, int(h * rng.uniform(0.016, 0.024)))
    font = _font(fsize)
    y = int(h * 0.05)
    gray = int(rng.integers(20, 70))
    for _ in range(_between(rng, cfg.text_lines)):
        x = int(w * rng.uniform(0.05, 0.12))
        words = [str(rng.choice(WORDS)).lower() for _ in range(int(rng.integers(3, 12)))]
        draw.text((x, y), " ".join(words), fill=(gray, gray, gray), font=font)
        y += int(fsize * rng.uniform(1.4, 2.6))
        if y > h * 0.95:
            break
    return np.asarray(im, dtype=np.float32)


def generate_page(rng: np.random.Generator, cfg: SynthConfig = SynthConfig()) -> SynthPage:
    """One page with its planted objects (labels in page pixels)."""
    w, h = cfg.page_size
    s = min(w, h) / 640
    page = _paper(rng, w, h, cfg)
    objects: list[PlantedObject] = []
    taken: list[tuple[int, int, int, int]] = []
    plan = [label for label in CLASSES for _ in range(_between(rng, getattr(cfg, f"{label}s")))]
    for label in plan:
        ink = str(rng.choice(getattr(cfg, f"{label}_inks")))
        rotation = 8 if label == "signature" else cfg.max_rotation  # signatures are signed nearly level
        if label == "signature":
            alpha = _signature(rng, int(rng.integers(*cfg.signature_width) * s))
        elif label == "stamp":
            size = int(rng.integers(*cfg.stamp_size) * s)
            alpha = _round_stamp(rng, size) if rng.random() < 0.5 else _rect_stamp(rng, size)
        else:
            alpha = _thumb(rng, int(rng.integers(*cfg.thumb_size) * s))
        alpha = _rotate(alpha, rng.uniform(-rotation, rotation))
        # only stamps get patchy ink (a dry stamp pad)
        alpha = _ink_layer(alpha, rng, cfg, patchy=label == "stamp" and rng.random() < cfg.partial_ink_p)
        ys, xs = np.nonzero(alpha > 0.15)
        if len(xs) == 0:
            continue
        alpha = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        oh, ow = alpha.shape
        near = None
        sigs = [t for t, o in zip(taken, objects, strict=True) if o.label == "signature"]
        if label == "stamp" and sigs and rng.random() < cfg.overlap_p:
            near = sigs[int(rng.integers(len(sigs)))]
        pos = _place(rng, w, h, ow, oh, taken, near, gap=int(cfg.min_gap * s))
        if pos is None:
            continue
        x, y = pos
        # ink multiplies the paper (subtractive colour), so overlapping inks darken each other
        _multiply(page, alpha, x, y, INKS[ink])
        box = (x, y, x + ow, y + oh)
        taken.append(box)
        objects.append(PlantedObject(label, box, ink))
    page += rng.normal(0, 1.5, page.shape)  # scanner noise
    return SynthPage(np.clip(page, 0, 255).astype(np.uint8), objects)


def generate_pages(n: int, seed: int, cfg: SynthConfig = SynthConfig()) -> list[SynthPage]:
    """``n`` pages; page ``i`` depends only on ``(seed, i)``, so a subset or a longer run reproduces it."""
    return [generate_page(np.random.default_rng([seed, i]), cfg) for i in range(n)]


def write_pages(pages: list[SynthPage], out: str | Path, prefix: str = "page") -> Path:
    """Write pages as a COCO detection folder (images + ``_annotations.coco.json``); returns the JSON path.

    Refuses to write into a folder that already holds an annotation file, so nothing is overwritten.
    """
    out = Path(out)
    ann_path = out / "_annotations.coco.json"
    if ann_path.exists():
        raise UserError(f"{ann_path} already exists; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, p in enumerate(pages):
        name = f"{prefix}_{i:05d}.png"
        Image.fromarray(p.image).save(out / name)
        images.append({"id": i + 1, "file_name": name, "width": p.image.shape[1], "height": p.image.shape[0]})
        for o in p.objects:
            x0, y0, x1, y1 = o.box
            cat = CLASSES.index(o.label) + 1
            anns.append(
                coco_ann(len(anns) + 1, i + 1, cat, [x0, y0, x1 - x0, y1 - y0], attributes={"ink": o.ink})
            )
    cats = [{"id": i + 1, "name": c, "supercategory": "mark"} for i, c in enumerate(CLASSES)]
    return dump_coco(ann_path, images, anns, cats)
