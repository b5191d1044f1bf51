"""Document-level inference: a page in, candidate regions classified, JSON (and an annotated image) out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training.classifier.model import RegionClassifier
from training.classifier.proposals import Region, crop, propose

COLOURS = {"signature": (0, 140, 255), "stamp": (230, 40, 40), "thumb": (150, 60, 200)}


def detector_regions(detector, image: np.ndarray, min_score: float) -> list[Region]:
    """A trained signature detector's boxes (any backend) as extra candidates."""
    det = detector.predict([image])[0]
    return [
        Region(tuple(int(round(v)) for v in box), "detector", float(s))
        for box, s in zip(det.boxes.tolist(), det.scores.tolist(), strict=True)
        if s >= min_score
    ]


def classify_page(
    image: np.ndarray,
    model: RegionClassifier,
    proposals_cfg,
    context: float,
    detector=None,
    detector_min_score: float | None = None,
    min_conf: float = 0.0,
) -> list[dict]:
    """Regions of an RGB page with their class: ``[{"box": [x0, y0, x1, y1], "class", "confidence", "source",
    "probabilities": {class: p}}]``, most confident first. ``proposals_cfg``: ``model.proposals``; ``context``:
    the crop margin (``crops.context``); a ``detector``'s boxes scoring ``detector_min_score`` or more are
    candidates too; ``min_conf`` drops low-confidence regions."""
    extra = detector_regions(detector, image, detector_min_score) if detector is not None else None
    regions = propose(image, proposals_cfg, extra)
    if not regions:
        return []
    probs = model.predict_proba([crop(image, r.box, context) for r in regions])
    out = []
    for r, p in zip(regions, probs, strict=True):
        i = int(p.argmax())
        if p[i] < min_conf:
            continue
        out.append(
            {
                "box": [int(v) for v in r.box],
                "class": model.classes[i],
                "confidence": round(float(p[i]), 4),
                "source": r.source,
                "probabilities": {c: round(float(v), 4) for c, v in zip(model.classes, p, strict=True)},
            }
        )
    return sorted(out, key=lambda d: -d["confidence"])


def annotate(image: np.ndarray, results: list[dict]) -> Image.Image:
    """The page with each region's box, class and confidence drawn on it."""
    im = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(im)
    for r in results:
        colour = COLOURS.get(r["class"], (0, 160, 0))
        draw.rectangle(r["box"], outline=colour, width=2)
        draw.text(
            (r["box"][0] + 2, max(0, r["box"][1] - 12)), f"{r['class']} {r['confidence']:.2f}", fill=colour
        )
    return im


def write_page_result(image: np.ndarray, results: list[dict], out_dir: Path, name: str, source: str) -> Path:
    """``<name>.json`` and ``<name>.png`` (annotated) in ``out_dir``; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    doc = {"page": source, "width": int(image.shape[1]), "height": int(image.shape[0]), "regions": results}
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    annotate(image, results).save(out_dir / f"{name}.png")
    return path
