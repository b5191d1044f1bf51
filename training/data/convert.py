"""``python -m training.data.convert data=<source> to=coco|yolo out=DIR``: a standalone converted copy.

Reads and validates any supported source (COCO, YOLO txt, HF dataset, Roboflow) and writes it as a Roboflow-
style COCO folder (``train|valid|test/_annotations.coco.json`` + images) or a YOLO folder (``images/``,
``labels/``, ``data.yaml``). Images are copied; the source is never written; an existing non-empty ``out`` is
refused.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml
from omegaconf import DictConfig

from training.cli import ConfigError, UserError, cli, require
from training.data.coco import COCO_FOLDERS, write_coco
from training.data.loader import Dataset, load_dataset
from training.data.schema import DetectionSplit, ImageRecord
from training.data.yolo import write_yolo_split

log = logging.getLogger(__name__)


def convert(dataset: Dataset, to: str, out: str | Path) -> Path:
    """Write ``dataset`` to ``out`` in format ``to`` (``coco`` or ``yolo``); returns ``out``."""
    out = Path(out).expanduser()
    if to not in ("coco", "yolo"):
        raise ConfigError(f"to={to!r}: valid values are ['coco', 'yolo']")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; refusing to overwrite it")
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if to == "yolo":
        for split, s in dataset.splits.items():
            write_yolo_split(s, tmp, split, link=False)
            if s.crowd:  # YOLO txt has no ignore regions: say what the copy loses
                log.warning(
                    "split %s: %d crowd boxes (iscrowd=1) not written: YOLO txt has no ignore regions",
                    split,
                    len(s.crowd),
                )
        # no `path`: ultralytics then resolves the split folders against this file's folder
        doc = {"names": dict(enumerate(dataset.class_names))}
        doc.update({split: f"images/{split}" for split in dataset.splits})
        (tmp / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    else:
        for split, s in dataset.splits.items():
            folder = tmp / COCO_FOLDERS.get(split, split)
            folder.mkdir(parents=True)
            images = []
            for im in s.images:
                name = f"{im.id}_{im.file.name}"
                shutil.copy2(im.file, folder / name)
                images.append(ImageRecord(im.id, folder / name, im.width, im.height))
            write_coco(
                DetectionSplit(split, s.source, images, s.annotations, s.categories, s.crowd),
                folder / "_annotations.coco.json",
            )
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


@cli("convert")
def main(cfg: DictConfig) -> None:

    require(cfg, "out", usage="where the converted dataset goes")
    if cfg.to not in ("coco", "yolo"):
        raise ConfigError(f"to={cfg.to!r}: valid values are ['coco', 'yolo']")
    dataset = load_dataset(cfg.data, list(cfg.splits))
    out = convert(dataset, str(cfg.to), str(cfg.out))
    counts = ", ".join(
        f"{k} {len(v.images)} images / {len(v.annotations)} boxes" for k, v in dataset.splits.items()
    )
    print(f"wrote {cfg.to} dataset to {out} ({counts})")


if __name__ == "__main__":
    main()
