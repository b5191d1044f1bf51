"""``python -m evaluation.predict checkpoint=... source=...``: a trained detector on images, folders, globs and PDFs.

The detector is loaded as the evaluator loads it (:func:`evaluation.run.load_model`: any backend's checkpoint or
any export) and called as the evaluator calls it (``predict`` on decoded RGB pages), so the boxes here are the
evaluator's. PDF pages are rendered with pypdfium2. A file that cannot be read (corrupt or encrypted PDF, a file
that is not an image) is listed and skipped with a count; with nothing left to predict it is one line, exit 2.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw

from evaluation.run import load_model
from training.backends.base import Detections
from training.data.images import ImageError, decode_rgb
from training.data.yolo import IMAGE_SUFFIXES
from training.errors import UserError, cli, first_line, require
from training.fileio import folder_name
from training.progress import progress
from training.train import run_dir_of, save_config

PDF = ".pdf"
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


@dataclass
class Page:
    """One image to predict: a file, or one page of a PDF (``page`` counts from 1)."""

    file: Path
    name: str  # unique output stem (the path below its source root, page number appended for PDFs)
    page: int | None = None


def _is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def collect(sources: list[str]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """The files to read as ``(file, root it was found under)``, and ``(path, why)`` for what is skipped.

    A folder is searched recursively for images and PDFs (other files are skipped, counted); a glob keeps the
    images and PDFs it matches; a file is taken as given (and skipped, counted, if it is neither).
    """
    found: list[tuple[Path, Path]] = []
    skipped: list[tuple[str, str]] = []
    for source in sources:
        if _is_glob(source):
            matches = [Path(p) for p in sorted(glob.glob(os.path.expanduser(source), recursive=True))]
            files = [p for p in matches if p.is_file()]
            root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path(".")
            if not files:
                raise UserError(f"source={source}: the pattern matches no file")
        else:
            path = Path(source).expanduser()
            if path.is_dir():
                files, root = sorted(p for p in path.rglob("*") if p.is_file()), path
                if not files:
                    raise UserError(f"{path}: empty folder, nothing to predict")
            elif path.is_file():
                files, root = [path], path.parent
            else:
                raise UserError(f"{path}: no such file or folder")
        for f in files:
            if f.suffix.lower() in IMAGE_SUFFIXES or f.suffix.lower() == PDF:
                found.append((f, root))
            else:
                skipped.append((str(f), f"not an image or PDF (suffix {f.suffix or 'none'!r})"))
    return found, skipped


def _open_pdf(path: Path, password: str | None):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path), password=password)
    except pdfium.PdfiumError as e:
        text = str(e)
        if "password" in text.lower():
            why = (
                "encrypted PDF (set pdf.password=...)"
                if password is None
                else "encrypted PDF, wrong password"
            )
            raise ImageError(f"{path}: {why}") from None
        raise ImageError(f"{path}: unreadable PDF ({first_line(e)})") from None


def pages(found: list[tuple[Path, Path]], password: str | None) -> tuple[list[Page], list[tuple[str, str]]]:
    """Every page to predict (PDFs opened to count theirs) and ``(path, why)`` for the files that cannot be."""
    out: list[Page] = []
    skipped: list[tuple[str, str]] = []
    names: set[str] = set()

    def name_of(stem: str) -> str:
        base, k = stem, 2
        while stem in names:
            stem, k = f"{base}_{k}", k + 1
        names.add(stem)
        return stem

    for f, root in found:
        stem = (
            str(f.relative_to(root).with_suffix("")).replace(os.sep, "__")
            if f.is_relative_to(root)
            else f.stem
        )
        if f.suffix.lower() != PDF:
            out.append(Page(f, name_of(stem)))
            continue
        try:
            pdf = _open_pdf(f, password)
        except ImageError as e:
            skipped.append((str(f), str(e).removeprefix(f"{f}: ")))
            continue
        n = len(pdf)
        pdf.close()
        if n == 0:
            skipped.append((str(f), "PDF without pages"))
        out.extend(Page(f, name_of(f"{stem}_p{i:04d}"), i) for i in range(1, n + 1))
    return out, skipped


def render(pages_: list[Page], dpi: float, password: str | None, max_pixels: int, skipped: list) -> Iterator:
    """``(page, HxWx3 uint8 RGB)`` for every page that decodes; the others go to ``skipped``."""
    import pypdfium2 as pdfium

    pdf, pdf_path = None, None
    for p in pages_:
        try:
            if p.page is None:
                yield p, decode_rgb(p.file, max_pixels)
                continue
            if pdf_path != p.file:
                if pdf is not None:
                    pdf.close()
                pdf, pdf_path = _open_pdf(p.file, password), p.file
            page = pdf[p.page - 1]
            w, h = (round(v * dpi / 72) for v in page.get_size())
            if w * h > max_pixels:
                raise ImageError(f"{p.file}: page {p.page} is {w}x{h} at {dpi} dpi, above max_image_pixels")
            yield p, np.asarray(page.render(scale=dpi / 72).to_pil().convert("RGB"))
        except (ImageError, pdfium.PdfiumError) as e:
            where = f"page {p.page}: " if p.page else ""
            skipped.append((str(p.file), where + str(e).removeprefix(f"{p.file}: ")))
    if pdf is not None:
        pdf.close()


def _batches(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cap(det: Detections, max_det: int | None) -> Detections:
    """The ``max_det`` highest-scoring boxes (all when None)."""
    if max_det is None or len(det) <= max_det:
        return det
    keep = np.argsort(-det.scores, kind="stable")[:max_det]
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep])


def draw(image: np.ndarray, det: Detections, class_names: list[str]) -> Image.Image:
    """The page with its predicted boxes, labelled ``class score``."""
    im = Image.fromarray(image)
    d = ImageDraw.Draw(im)
    width = max(2, round(max(im.size) / 400))
    for (x0, y0, x1, y1), s, lab in zip(det.boxes, det.scores, det.labels, strict=True):
        colour = COLOURS[int(lab) % len(COLOURS)]
        d.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        d.text((x0 + width, max(0.0, y0 - 12)), f"{class_names[int(lab)]} {s:.2f}", fill=colour)
    return im


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def predict_sources(cfg: DictConfig, run_dir: Path) -> dict:
    """Predict every page of ``cfg.source``; write the outputs into ``run_dir``; return the summary."""
    sources = [str(s) for s in (cfg.source if OmegaConf.is_list(cfg.source) else [cfg.source])]
    for s in sources:
        if not _is_glob(s) and Path(s).expanduser().is_dir() and _inside(run_dir, Path(s).expanduser()):
            raise UserError(f"{run_dir}: the run dir is inside source {s}; choose another hydra.run.dir")
    found, skipped = collect(sources)
    todo, unreadable = pages(found, cfg.pdf.password)
    skipped += unreadable
    if not todo:
        raise UserError(f"source={','.join(sources)}: nothing to predict ({_skip_text(skipped)})")

    model = load_model(cfg.checkpoint, cfg.backend, cfg.decode, cfg.get("precision"), run_dir)
    names = list(model.class_names)
    imgsz = cfg.imgsz  # None: the size the checkpoint was trained or exported at
    max_det = None if cfg.max_det is None else int(cfg.max_det)
    conf = float(cfg.conf)
    results, rows, images = [], [], []
    for sub in ("annotated", "crops"):
        if cfg.save[sub]:
            (run_dir / sub).mkdir(parents=True, exist_ok=True)

    bar = progress(desc="predict", total=len(todo), unit="page")
    decoded = render(todo, float(cfg.pdf.dpi), cfg.pdf.password, int(cfg.max_image_pixels), skipped)
    for chunk in _batches(decoded, int(cfg.batch)):
        dets = model.predict([a for _, a in chunk], conf=conf, imgsz=imgsz)
        for (page, arr), det in zip(chunk, dets, strict=True):
            det = cap(det, max_det)  # predict() already dropped the boxes below conf
            image_id = len(images) + 1
            entry = {
                "id": image_id,
                "file_name": str(page.file),
                "width": arr.shape[1],
                "height": arr.shape[0],
            }
            images.append(entry | ({"page": page.page} if page.page else {}) | {"n_detections": len(det)})
            for k, ((x0, y0, x1, y1), s, lab) in enumerate(
                zip(det.boxes, det.scores, det.labels, strict=True)
            ):
                box = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
                res = {"image_id": image_id, "category_id": int(lab), "bbox": box, "score": float(s)}
                results.append(res | {"category_name": names[int(lab)], "file_name": str(page.file)})
                if page.page:
                    results[-1]["page"] = page.page
                rows.append(
                    [str(page.file), page.page or "", image_id, names[int(lab)], f"{s:.6f}"]
                    + [f"{v:.2f}" for v in (x0, y0, x1, y1)]
                )
                if cfg.save.crops:
                    # class names come with the model (its metadata): never a path of their own
                    folder = run_dir / "crops" / folder_name(names[int(lab)], f"class_{int(lab)}")
                    folder.mkdir(exist_ok=True)
                    crop = arr[max(0, int(y0)) : int(np.ceil(y1)), max(0, int(x0)) : int(np.ceil(x1))]
                    if crop.size:
                        Image.fromarray(crop).save(folder / f"{page.name}_{k}.png")
            if cfg.save.annotated:
                draw(arr, det, names).save(run_dir / "annotated" / f"{page.name}.png")
        bar.update(len(chunk))
    bar.close()
    if not images:
        raise UserError(f"source={','.join(sources)}: no page could be read ({_skip_text(skipped)})")

    (run_dir / "predictions.json").write_text(json.dumps(results), encoding="utf-8")
    if cfg.save.csv:
        with open(run_dir / "predictions.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["file", "page", "image_id", "class", "score", "x0", "y0", "x1", "y1"])
            w.writerows(rows)
    summary = {
        "checkpoint": str(cfg.checkpoint),
        "conf": conf,
        "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
        "n_pages": len(images),
        "n_detections": len(results),
        "images": images,
        "skipped": [{"path": p, "why": why} for p, why in skipped],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _skip_text(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return "no images or PDFs found"
    first = f"{skipped[0][0]}: {skipped[0][1]}"
    return f"{len(skipped)} skipped, first: {first}" if len(skipped) > 1 else first


@cli("predict")
def main(cfg: DictConfig) -> None:
    require(cfg, "checkpoint", "source", usage="checkpoint=RUN_OR_EXPORT source=IMAGE|FOLDER|GLOB|PDF")
    run_dir = run_dir_of(cfg)
    if (run_dir / "predictions.json").exists():
        raise UserError(f"{run_dir} already holds predictions.json; choose another hydra.run.dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    summary = predict_sources(cfg, run_dir)
    for skip in summary["skipped"]:
        print(f"skipped {skip['path']}: {skip['why']}")
    n_skip = len(summary["skipped"])
    print(
        f"{summary['n_detections']} boxes on {summary['n_pages']} pages"
        + (f", {n_skip} skipped" if n_skip else "")
        + f" -> {run_dir / 'predictions.json'}"
    )


if __name__ == "__main__":
    main()
