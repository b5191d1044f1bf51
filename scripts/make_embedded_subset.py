"""Build the embedded default dataset (a small subset of Roboflow signatures-xc8up v2, CC BY 4.0).

Run once by a maintainer; the project never reads the source at run time.

    python scripts/make_embedded_subset.py /path/to/signatures-xc8up training/assets/signatures-xc8up-mini
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

from training.data.coco import write_coco
from training.data.issues import IssueLog
from training.data.schema import Annotation, Category, DetectionSplit, ImageRecord
from training.data.yolo import read_yolo

COUNTS = {"train": 32, "val": 12, "test": 12}
FOLDERS = {"train": "train", "val": "valid", "test": "test"}
MAX_SIDE = 640


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path, help="signatures-xc8up folder with data.yaml")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    for split, n in COUNTS.items():
        s = read_yolo(args.source / "data.yaml", split, split, IssueLog(strict=True))
        # Pages without boxes mostly carry unlabelled initials (see the dataset README): leave them out.
        labelled = [im for im in s.images if s.annotations_for(im.id)][:n]
        out = args.out / FOLDERS[split]
        out.mkdir(parents=True)
        images, anns = [], []
        for new_id, im in enumerate(labelled):
            scale = min(1.0, MAX_SIDE / max(im.width, im.height))
            w, h = round(im.width * scale), round(im.height * scale)
            with Image.open(im.file) as pil:
                small = pil.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
            small.save(out / im.file.name, quality=90)
            images.append(ImageRecord(new_id, out / im.file.name, w, h))
            for a in s.annotations_for(im.id):
                box = tuple(v * sx for v, sx in zip(a.bbox, (w / im.width, h / im.height) * 2, strict=True))
                anns.append(Annotation(len(anns), new_id, 1, box))
        split_out = DetectionSplit(split, "", images, anns, [Category(1, "signature")])
        doc_path = write_coco(split_out, out / "_annotations.coco.json")
        print(split, len(images), "images", len(anns), "boxes ->", doc_path)
    for f in ("README.dataset.txt", "README.roboflow.txt"):
        shutil.copy(args.source / f, args.out / f)


if __name__ == "__main__":
    main()
