"""``python -m training.classifier.infer checkpoint=... pages=... out=...``: document-level inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from training.classifier.model import load_classifier
from training.classifier.pipeline import classify_page, write_page_result
from training.cli import DataError, UserError, cli, require
from training.data.images import load_rgb
from training.data.yolo import IMAGE_SUFFIXES, image_files


def page_files(pages: str | Path) -> list[Path]:
    p = Path(pages).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = image_files(p)
        if not files:
            raise DataError(f"{p}: no images ({sorted(IMAGE_SUFFIXES)})")
        return files
    raise DataError(f"{p}: no such file or folder")


def load_detector(det_cfg):
    """The optional signature detector of ``detector:`` (any backend), or None."""
    if not det_cfg or not det_cfg.get("checkpoint"):
        return None
    import tempfile

    from training.backends import get_backend

    backend = get_backend(str(det_cfg.backend))
    run_dir = tempfile.mkdtemp(prefix="sigdet-det-")
    return backend.from_checkpoint(str(det_cfg.checkpoint), det_cfg.decode[backend.name], run_dir=run_dir)


@cli("classify")
def main(cfg: DictConfig) -> None:
    require(cfg, "checkpoint", "pages", "out", usage="checkpoint=PATH pages=IMAGE_OR_DIR out=DIR")
    model = load_classifier(str(cfg.checkpoint))
    detector = load_detector(cfg.get("detector"))
    out = Path(str(cfg.out)).expanduser()
    files = page_files(str(cfg.pages))
    clash = [f.stem for f in files if (out / f"{f.stem}.json").exists()]
    if clash:
        raise UserError(
            f"{out / (clash[0] + '.json')} already exists; choose another out= (nothing is overwritten)"
        )
    for f in files:
        image = np.asarray(load_rgb(f))
        res = classify_page(
            image,
            model,
            cfg.model.proposals,
            float(cfg.context),
            detector,
            float(cfg.detector.min_score),
            float(cfg.min_conf),
        )
        path = write_page_result(image, res, out, f.stem, str(f))
        counts = {c: sum(r["class"] == c for r in res) for c in model.classes}
        print(f"{f}: {len(res)} regions {counts} -> {path}")


if __name__ == "__main__":
    main()
