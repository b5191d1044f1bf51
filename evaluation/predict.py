"""``python -m evaluation.predict source=...`` (``sigdet predict``, ``sigdet.load().predict``): a trained detector
on images, folders, globs and PDFs, with a page-level answer: *is this page signed?*

The detector is loaded as the evaluator loads it (:func:`evaluation.run.load_model`: any backend's checkpoint or
any export; the shipped real-page model when no checkpoint is given) and called as the evaluator calls it
(``predict`` on decoded RGB pages), so the boxes here are the evaluator's. A page is called signed when its best
box scores at least the operating confidence: ``conf=`` when given, else the model's stored operating point (the
confidence reaching the target page recall on valid, :mod:`evaluation.pages`), else ``fallback_conf``.

At scale: pages are decoded / rendered (pypdfium2) in a background thread while the detector runs, one JSON line
per page is appended and flushed to ``pages.jsonl`` as it goes, ``resume=true`` continues a killed run (no page
twice, a torn last line dropped), ``shard=i/n`` takes a deterministic share of the files (a job array scales it out)
and memory does not grow with the number of pages. The COCO ``predictions.json``, ``predictions.csv``,
``documents.csv`` and ``summary.json`` are written from ``pages.jsonl`` at the end.

A file that cannot be read (corrupt or encrypted PDF, a file that is not an image) is listed and skipped with a
count; with nothing left to predict it is one line, exit 2.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import logging
import os
import queue
import re
import shutil
import threading
import warnings
import zlib
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw

from evaluation.run import json_object, load_model, stored_operating_point
from training.backends.base import Detections
from training.cli import ConfigError, UserError, check_device, cli, first_line
from training.data.images import (
    IMAGE_SUFFIXES,
    MULTI_PAGE_SUFFIXES,
    ImageError,
    decode_rgb,
    frame_count,
    rgb8,
)
from training.fileio import folder_name
from training.progress import progress
from training.train import run_dir_of, save_config

log = logging.getLogger(__name__)
PDF = ".pdf"
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")
PAGES, STATE = "pages.jsonl", "predict_state.json"
PART = "predictions.json.part"  # predictions.json until the run's last write
# everything a run writes into its run dir (Hydra's .hydra/ and predict.log aside): a run dir holding any of them
# is refused unless resume=true continues it, so that no file of the user's is overwritten
OUTPUTS = (
    PAGES,
    "predictions.json",
    PART,
    "predictions.csv",
    "predictions.csv.part",
    "documents.csv",
    "summary.json",
    "config.yaml",
    STATE,
    "annotated",
    "crops",
)
# the real-page detector the package ships (training/assets/pretrained; its card says how it was made)
SHIPPED = "pretrained/signatures-yolov8n.pt"


@dataclass
class Page:
    """One image to predict: a file, one page of a PDF (``page`` counts from 1), or an in-memory image."""

    file: Path | None
    name: str  # unique output stem (the path below its source root, page number appended for PDFs)
    page: int | None = None
    image: np.ndarray | None = None  # an in-memory page (the API's PIL images and arrays)

    @property
    def pdf(self) -> bool:
        return self.file is not None and self.file.suffix.lower() == PDF

    @property
    def key(self) -> str:
        """What ``pages.jsonl`` and ``resume`` identify the page by."""
        return f"{self.file}#{self.page or 0}" if self.file is not None else self.name


@dataclass
class PageResult:
    """The answer for one page: its boxes (``xyxy`` pixels of the page as read or rendered) and whether it is
    signed. ``boxes_pt`` gives PDF pages' boxes in PDF points (1/72 inch from the page's top-left corner)."""

    file: str | None
    page: int | None
    width: int
    height: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    conf: float
    dpi: float | None = None  # PDF pages: the rendering resolution
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.width, self.height

    @property
    def signed(self) -> bool:
        return bool(len(self.scores)) and float(self.scores.max()) >= self.conf

    @property
    def best_score(self) -> float:
        return float(self.scores.max()) if len(self.scores) else 0.0

    @property
    def boxes_pt(self) -> np.ndarray | None:
        return None if self.dpi is None else self.boxes * (72.0 / self.dpi)

    @property
    def label_names(self) -> list[str]:
        return [self.class_names[int(k)] for k in self.labels]

    def to_json(self) -> dict:
        """One line of ``pages.jsonl``."""
        out = {
            "file": self.file,
            "page": self.page,
            "width": self.width,
            "height": self.height,
            "signed": self.signed,
            "n_boxes": len(self.scores),
            "best_score": self.best_score,
            "conf": self.conf,
            "boxes": self.boxes.tolist(),
            "scores": self.scores.tolist(),
            "labels": self.label_names,
        }
        if self.dpi is not None:
            out["dpi"] = self.dpi
            out["boxes_pt"] = self.boxes_pt.tolist()
        return out | self.extra

    def __repr__(self) -> str:
        where = f"{self.file or self.name}" + (f" p{self.page}" if self.page else "")
        return f"PageResult({where}: {'signed' if self.signed else 'not signed'}, {len(self.scores)} boxes)"


# -- sources ---------------------------------------------------------------------------------------------------
def _has_wildcard(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_glob(source: str) -> bool:
    """A pattern, not a path: wildcards in it, and no file or folder of that very name (``scan[1].pdf``)."""
    return _has_wildcard(source) and not Path(source).expanduser().exists()


def _glob_base(pattern: str) -> Path:
    """The folder before a glob's first wildcard."""
    parts = Path(os.path.expanduser(pattern)).parts
    i = next(k for k, part in enumerate(parts) if _has_wildcard(part))
    return Path(*parts[:i]) if i else Path(".")


def _key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def walk_files(root: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """Every file below ``root``, sorted: each real folder walked once and each real file taken once, however many
    links lead to them. A link back to a folder already walked (a loop), a broken link, an unreadable folder and a
    second path to the same file go to ``skipped`` with the reason.

    Written here rather than with ``Path.rglob`` / ``glob``: those follow a link loop until the path is too long
    (a glob with ``**`` then grows without end) and list neither broken links nor repeats."""
    seen_dirs, seen_files, out = {_key(root)}, {}, []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append((str(folder), f"unreadable folder ({e.strerror or e.__class__.__name__})"))
            continue
        subdirs = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_symlink() and not path.exists():
                    skipped.append((str(path), "broken symbolic link"))
                    continue
                if entry.is_dir():
                    key = _key(path)
                    if key in seen_dirs:
                        why = f"a link to a folder already walked ({os.path.realpath(path)}): not followed again"
                        skipped.append((str(path), why))
                        continue
                    seen_dirs.add(key)
                    subdirs.append(path)
                elif entry.is_file():
                    key = _key(path)
                    if key in seen_files:
                        skipped.append((str(path), f"the same file as {seen_files[key]}: read once"))
                        continue
                    seen_files[key] = path
                    out.append(path)
            except OSError as e:  # a link loop of files (ELOOP), a permission problem
                skipped.append((str(path), f"unreadable ({e.strerror or e.__class__.__name__})"))
        stack.extend(reversed(subdirs))
    return sorted(out)


def _segment_regex(seg: str) -> str:
    """One path segment of a glob as a regex: ``*`` and ``?`` stop at ``/``, ``[...]`` a class, and a name starting
    with a dot is matched only by a segment that starts with one (as ``glob`` does)."""
    out, i = ("" if seg.startswith(".") else r"(?!\.)"), 0
    while i < len(seg):
        c = seg[i]
        j = seg.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif j != -1:
            body = seg[i + 1 : j]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return out


def glob_files(pattern: str, skipped: list[tuple[str, str]]) -> tuple[list[Path], Path]:
    """The files a glob matches (``**``: any depth, walked by :func:`walk_files`, so loops end and are listed), and
    the folder before its first wildcard (the root the outputs' names and the shards are taken below)."""
    parts = Path(os.path.expanduser(pattern)).parts
    base = _glob_base(pattern)
    rest = parts[len(base.parts) if str(base) != "." else 0 :]
    if "**" not in rest:  # no recursion, so no loop to follow
        return [Path(p) for p in sorted(glob.glob(str(Path(*parts)))) if Path(p).is_file()], base
    regex = ""
    for k, seg in enumerate(rest):
        last = k == len(rest) - 1
        if seg == "**":
            regex += r"(?:(?!\.)[^/]*/)*" + (r"(?!\.)[^/]*" if last else "")
        else:
            regex += _segment_regex(seg) + ("" if last else "/")
    matcher = re.compile(regex)
    if not base.is_dir():
        return [], base
    files = walk_files(base, skipped)
    return [f for f in files if matcher.fullmatch(f.relative_to(base).as_posix())], base


def collect(sources: list[str]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """The files to read as ``(file, root it was found under)``, and ``(path, why)`` for what is skipped.

    A folder is searched recursively for images and PDFs (other files are skipped, counted; link loops, broken links
    and repeats listed, see :func:`walk_files`); a glob keeps the images and PDFs it matches; a file is taken as
    given (and skipped, counted, if it is neither).
    """
    found: list[tuple[Path, Path]] = []
    skipped: list[tuple[str, str]] = []
    for source in sources:
        if _is_glob(source):
            files, root = glob_files(source, skipped)
            if not files:
                raise UserError(f"source={source}: the pattern matches no file")
        else:
            path = Path(source).expanduser()
            if path.is_dir():
                files, root = walk_files(path, skipped), path
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


def parse_shard(value) -> tuple[int, int] | None:
    """``shard=i/n`` as ``(i, n)`` (0 <= i < n); None for no sharding; a :class:`UserError` otherwise."""
    if value is None or str(value).strip() in ("", "null"):
        return None
    text = str(value).strip()
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"shard={text}: expected i/n with whole numbers, e.g. shard=0/4")
    i, n = (int(p) for p in parts)
    if n < 1 or i >= n:
        raise UserError(f"shard={text}: needs n >= 1 and 0 <= i < n")
    return i, n


def in_shard(file: Path, root: Path, shard: tuple[int, int] | None) -> bool:
    """Whether ``file`` belongs to ``shard``: a stable hash of its path below the source root (the same on every
    machine and in every run, whatever else the folder holds), so that n jobs together take every file once and
    a PDF's pages stay in one job."""
    if shard is None:
        return True
    rel = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.as_posix()
    return zlib.crc32(rel.encode("utf-8")) % shard[1] == shard[0]


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
        if "Success" in text:  # PDFium could not load it and set no error code: a document without pages
            raise ImageError(f"{path}: unreadable PDF (no pages it can load)") from None
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
        if f.suffix.lower() in MULTI_PAGE_SUFFIXES:
            try:
                n = frame_count(f)
            except ImageError as e:
                skipped.append((str(f), str(e).removeprefix(f"{f}: ")))
                continue
            if n > 1:  # a multi-page TIFF is paged like a PDF
                out.extend(Page(f, name_of(f"{stem}_p{i:04d}"), i) for i in range(1, n + 1))
                continue
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


def in_memory(images: list, start: int = 0) -> list[Page]:
    """PIL images and ``HxWx3`` arrays as pages (RGB uint8; a grey ``HxW`` array or RGBA is converted)."""
    out = []
    for k, im in enumerate(images, start):
        if isinstance(im, Image.Image):
            arr = rgb8(im)  # the pixels the same picture read from a file gets (alpha on white, 16-bit gray)
        elif isinstance(im, np.ndarray):
            if im.dtype != np.uint8:
                raise UserError(f"image {k}: an array of dtype {im.dtype}; expected uint8 RGB")
            if not (im.ndim == 2 or (im.ndim == 3 and im.shape[2] in (3, 4))):
                raise UserError(f"image {k}: an array of shape {im.shape}; expected HxWx3 RGB")
            arr = rgb8(Image.fromarray(im))
        else:
            raise UserError(f"image {k}: {type(im).__name__} is not a path, a PIL image or an array")
        if 0 in arr.shape:
            raise UserError(f"image {k}: an empty image ({arr.shape[1]}x{arr.shape[0]} pixels)")
        out.append(Page(None, f"image_{k}", None, arr))
    return out


def render(
    pages_: Iterable[Page], dpi: float, password: str | None, max_pixels: int, skipped: list
) -> Iterator:
    """``(page, HxWx3 uint8 RGB)`` for every page that decodes; the others go to ``skipped``."""
    import pypdfium2 as pdfium

    pdf, pdf_path = None, None
    try:
        for p in pages_:
            try:
                if p.image is not None:
                    yield p, p.image
                    continue
                if not p.pdf:  # an image, or one page of a multi-page TIFF
                    yield p, decode_rgb(p.file, max_pixels, None if p.page is None else p.page - 1)
                    continue
                if pdf_path != p.file:
                    if pdf is not None:
                        pdf.close()
                    pdf, pdf_path = _open_pdf(p.file, password), p.file
                page = pdf[p.page - 1]
                try:
                    w, h = (round(v * dpi / 72) for v in page.get_size())
                    if w * h > max_pixels:
                        raise ImageError(
                            f"{p.file}: {w}x{h} at {dpi:g} dpi, above the pixel limit max_image_pixels={max_pixels}"
                            " (a lower pdf.dpi renders it)"
                        )
                    # RGB straight from PDFium's bitmap (rev_byteorder), copied out of it: half the time of a PIL
                    # round trip; page and bitmap closed at once (PDFium keeps them otherwise: memory grows with pages)
                    bitmap = page.render(scale=dpi / 72, rev_byteorder=True)
                    arr = np.array(bitmap.to_numpy()[..., :3])
                    bitmap.close()
                finally:
                    page.close()
                yield p, arr
            except (ImageError, pdfium.PdfiumError) as e:
                why = str(e).removeprefix(f"{p.file}: ")
                if p.page and not why.startswith(f"page {p.page} "):
                    why = f"page {p.page}: {why}"
                skipped.append((str(p.file), why))
    finally:  # also when the consumer stops early (the generator is closed)
        if pdf is not None:
            pdf.close()


def prefetch(items: Iterator, size: int) -> Iterator:
    """``items`` produced by a background thread, at most ``size`` ahead: PDF rendering and image decoding (PDFium
    and Pillow release the GIL) overlap the detector, and memory stays bounded by ``size`` pages.

    Written here rather than taken from a library: a bounded single-producer queue is all it is, and torch's
    DataLoader would pickle pages into worker processes (and the PDF handle cannot cross a process)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, size))
    done, stop = object(), threading.Event()

    def put(item) -> bool:
        """Hand ``item`` over unless the consumer has stopped; whether it was."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # re-raised in the consumer
            put(e)
        finally:
            if isinstance(
                items, Generator
            ):  # render(): its open PDF closed here, in the thread that opened it
                items.close()

    t = threading.Thread(target=produce, name="sigdet-render", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


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


# -- the model and its operating point ------------------------------------------------------------------------
def shipped_checkpoint() -> Path:
    """The real-page detector shipped in the package (its card: the .md beside it)."""
    from training.data import asset_path

    return Path(asset_path(SHIPPED))


def resolve_checkpoint(checkpoint) -> Path:
    """What ``checkpoint=`` names: None -> the shipped model; a run folder -> its ``weights/best.pt`` (or the
    transformers ``weights/best`` folder); a file or an export as given."""
    if checkpoint is None or str(checkpoint) in ("", "null"):
        path = shipped_checkpoint()
        if not path.is_file():
            raise UserError(f"{path}: the shipped model is missing from this install; give checkpoint=")
        return path
    path = Path(str(checkpoint)).expanduser()
    if path.is_dir():
        for cand in (path / "weights" / "best.pt", path / "weights" / "best"):
            if cand.exists():
                return cand
        from training.inference.exported import is_exported

        if not is_exported(path) and not (path / "sigdet.json").is_file():
            last = next(
                (c for c in (path / "weights" / "last.pt", path / "weights" / "last") if c.exists()), None
            )
            hint = f"; {last} is there (a run that stopped early?): checkpoint={last}" if last else ""
            raise UserError(
                f"{path}: a folder with no model in it (no weights/best.pt, no export manifest, no transformers "
                f"sigdet.json){hint}"
            )
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    return path


def _check_values(cfg) -> None:
    """The numbers of conf/predict.yaml (no schema: a value from the command line arrives as text) as one line."""

    def number(key, whole, low, high=None, none_ok=False):
        value = OmegaConf.select(cfg, key)
        if value is None and none_ok:
            return
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (not whole or value == int(value))
        )
        if not ok or value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ConfigError(f"{key}={value!r}: expected {'a whole number' if whole else 'a number'} {span}")

    number("conf", False, 0.0, 1.0, none_ok=True)
    number("fallback_conf", False, 0.0, 1.0)
    number("max_det", True, 1, none_ok=True)
    number("batch", True, 1)
    number("prefetch", True, 0)
    number("pdf.dpi", False, 1.0)
    number("max_image_pixels", True, 1)
    number("imgsz", True, 32, none_ok=True)
    if cfg.imgsz is not None and int(cfg.imgsz) % 32:
        raise ConfigError(
            f"imgsz={cfg.imgsz}: expected a multiple of 32 (the detectors' stride), e.g. {32 * round(cfg.imgsz / 32)}"
        )
    # Hydra reads `resume=no` as the text "no", which Python takes for true
    for key in ("resume", "half", "save.annotated", "save.csv", "save.crops"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
    # a password the command line read as a number: digits are kept as text; 1e3 or true would not be what was typed
    if isinstance(cfg.pdf.password, bool | float):
        raise ConfigError(
            "pdf.password: the command line read it as a number or a boolean, not as typed; quote it: "
            "'pdf.password=\"...\"'"
        )


class Predictor:
    """A loaded detector with the page-level decision: what ``sigdet.load`` returns and ``predict`` runs.

    ``conf``: the operating confidence; None takes the model's stored operating point (``operating_point``), else
    ``fallback_conf``.
    """

    def __init__(self, model, checkpoint: Path, cfg: DictConfig):
        self.model = model
        self.checkpoint = Path(checkpoint)
        self.class_names = list(model.class_names)
        _check_values(cfg)
        # read only when it decides: a conf= of the user's own needs no file beside the model
        self.operating_point = None if cfg.conf is not None else stored_operating_point(self.checkpoint)
        if cfg.conf is not None:
            self.conf, self.conf_source = float(cfg.conf), "conf="
        elif self.operating_point is not None:
            self.conf = float(self.operating_point["conf"])
            self.conf_source = (
                f"operating point (page recall {self.operating_point.get('target_recall')} on "
                f"{self.operating_point.get('chosen_on')}, {self.operating_point['from']})"
            )
        else:
            self.conf, self.conf_source = (
                float(cfg.fallback_conf),
                "fallback_conf (no stored operating point)",
            )
        self.imgsz = cfg.imgsz  # None: the size the checkpoint was trained or exported at
        self.max_det = None if cfg.max_det is None else int(cfg.max_det)
        self.batch = int(cfg.batch)
        self.dpi = float(cfg.pdf.dpi)
        self.password = None if cfg.pdf.password is None else str(cfg.pdf.password)
        self.max_pixels = int(cfg.max_image_pixels)
        self.prefetch = int(cfg.prefetch)

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: Path | str = ".") -> Predictor:
        """The detector ``cfg.checkpoint`` names (conf/predict.yaml), loaded on ``cfg.device``."""
        from training.backends import backend_of, get_backend
        from training.inference.exported import is_exported

        checkpoint = resolve_checkpoint(cfg.checkpoint)
        check_device(cfg.device)
        exported = is_exported(checkpoint)
        backend = cfg.backend or ("ultralytics" if exported else backend_of(checkpoint))
        if not exported and not get_backend(backend).is_detector:
            raise UserError(
                f"{checkpoint}: not a detector (a {backend} checkpoint); predict needs a detector"
            )
        model = load_model(checkpoint, backend, cfg.decode, cfg.get("precision"), run_dir, device=cfg.device)
        if cfg.half:
            if exported:
                raise UserError(
                    f"half=true: {checkpoint} is an export (it runs in the precision it was exported in; "
                    "formats=[tensorrt_fp16] or openvino_int8 for a faster one)"
                )
            if not str(model.device).startswith("cuda"):
                log.warning(
                    "half=true on %s: FP16 is meant for GPUs (a CPU runs it, usually slower)", model.device
                )
            model.set_half()
        return cls(model, checkpoint, cfg)

    def pages_of(self, source) -> tuple[list[Page], list[tuple[str, str]]]:
        """The pages of ``source`` (a path, folder, glob or PDF, a PIL image, an array, or a list of these) and the
        files skipped."""
        items = list(source) if isinstance(source, list | tuple) else [source]
        paths = [str(s) for s in items if isinstance(s, str | os.PathLike)]
        images = [s for s in items if not isinstance(s, str | os.PathLike)]
        if paths and images:
            raise UserError("source: give either paths or in-memory images, not both in one call")
        if images:
            return in_memory(images), []
        found, skipped = collect(paths)
        todo, unreadable = pages(found, self.password)
        return todo, skipped + unreadable

    def stream(
        self, todo: Iterable[Page], skipped: list
    ) -> Iterator[tuple[PageResult, np.ndarray, Detections]]:
        """``(result, page pixels, detections)`` per page of ``todo`` that decodes, in order; the pages that do not
        go to ``skipped``. Decoding runs ahead in a background thread (at most ``prefetch`` pages)."""
        decoded = prefetch(
            render(todo, self.dpi, self.password, self.max_pixels, skipped), self.prefetch or self.batch
        )
        for chunk in _batches(decoded, self.batch):
            # boxes below the operating confidence are dropped: the page's answer is made of the boxes it keeps
            dets = self.model.predict([a for _, a in chunk], conf=self.conf, imgsz=self.imgsz)
            for (page, arr), det in zip(chunk, dets, strict=True):
                det = cap(det, self.max_det)
                result = PageResult(
                    file=None if page.file is None else str(page.file),
                    page=page.page,
                    width=int(arr.shape[1]),
                    height=int(arr.shape[0]),
                    boxes=np.asarray(det.boxes, dtype=float).reshape(-1, 4),
                    scores=np.asarray(det.scores, dtype=float),
                    labels=np.asarray(det.labels, dtype=int),
                    class_names=self.class_names,
                    conf=self.conf,
                    dpi=self.dpi if page.pdf else None,
                    name=page.name,
                )
                yield result, arr, det

    def predict(self, source) -> list[PageResult]:
        """One :class:`PageResult` per page of ``source``. Unreadable files are skipped with a warning that names
        them (:meth:`iter` collects them instead); a source none of whose files can be read raises
        :class:`UserError`, as the command exits 2: an empty list means no page, never "no signature"."""
        skipped: list[tuple[str, str]] = []
        results = list(self.iter(source, skipped))
        skipped = list(dict.fromkeys(skipped))
        if skipped and not results:
            raise UserError(f"{_source_text(source)}: nothing could be read ({_skip_text(skipped)})")
        lost = lost_pages(skipped)
        if lost:
            warnings.warn(
                f"{len(lost)} file(s) of {_source_text(source)} skipped, unreadable ({_skip_text(lost)}); "
                "Predictor.iter(source, skipped=[]) lists every file skipped",
                SkippedFilesWarning,
                stacklevel=2,
            )
        return results

    def iter(self, source, skipped: list | None = None) -> Iterator[PageResult]:
        """:meth:`predict` one page at a time (constant memory over a large source); ``skipped`` collects
        ``(path, why)`` of the files that could not be read."""
        todo, skip = self.pages_of(source)
        sink = skipped if skipped is not None else []
        sink.extend(skip)
        for result, _, _ in self.stream(todo, sink):
            yield result


def lost_pages(skipped: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The skips that lose pages: images and PDFs (or some of their pages) that did not read, folders that did
    not open; not the other files of a folder, nor a second path to a file already read."""
    return [
        (path, why)
        for path, why in skipped
        if why.startswith("unreadable")
        or (Path(path).suffix.lower() in IMAGE_SUFFIXES | {PDF} and not why.startswith("the same file as"))
    ]


class SkippedFilesWarning(UserWarning):
    """:meth:`Predictor.predict` skipped files it could not read (the warning names them)."""


def _source_text(source) -> str:
    items = list(source) if isinstance(source, list | tuple) else [source]
    named = [str(s) for s in items if isinstance(s, str | os.PathLike)]
    text = ",".join(named[:3]) + (f" (+{len(named) - 3})" if len(named) > 3 else "")
    return f"source={text}" if named else "source"


# -- the command: a run folder of results ---------------------------------------------------------------------
def _sources(cfg) -> list[str]:
    items = list(cfg.source) if OmegaConf.is_list(cfg.source) else [cfg.source]
    # `source=` and `source=null` name nothing (Path("") would be the working folder)
    if not items or any(s is None or not str(s).strip() for s in items):
        raise UserError(
            f"source={cfg.source if cfg.source is not None else 'null'}: name an image, folder, glob or PDF"
        )
    return [str(s) for s in items]


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


# what Hydra writes into a run dir before the task starts
_BOOKKEEPING = frozenset({".hydra", "predict.log"})


def _hydra_made(run_dir: Path) -> bool:
    """Whether ``run_dir`` is the timestamped run dir Hydra made for this command (no ``hydra.run.dir`` given): a
    folder of this run's own, never one the user named."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    if Path(hc.runtime.output_dir).resolve() != run_dir.resolve():
        return False
    return not any(str(o).split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in hc.overrides.hydra)


def _held_output(run_dir: Path) -> str | None:
    """The first file of :data:`OUTPUTS` already in ``run_dir``; None when a fresh run writes none over."""
    return next((name for name in OUTPUTS if (run_dir / name).exists()), None)


def _source_holding(sources: list[str], run_dir: Path) -> str | None:
    """The first source folder ``run_dir`` lies inside (globs aside); None when it lies in none."""
    for s in sources:
        source = Path(s).expanduser()
        if not _is_glob(s) and source.is_dir() and _inside(run_dir, source):
            return s
    return None


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra's guard (conf/predict.yaml ``run_files.guard``): a run dir the command will refuse (inside a source,
    or holding files a fresh run writes) gets no ``.hydra/`` records and no log from Hydra either."""
    sources = _sources(cfg)
    inside = _source_holding(sources, run_dir)
    if inside is not None:
        raise UserError(f"{run_dir}: the run dir is inside source {inside}")
    if cfg.resume is not True:
        held = _held_output(run_dir)
        if held is not None:
            raise UserError(f"{run_dir} already holds {held}")


def _refuse_run_dir_inside_source(sources: list[str], run_dir: Path) -> None:
    """A run dir inside a source folder is refused (nothing is written into a source; the next run would read this
    one's outputs). When Hydra made it for this command (the default ``outputs/predict/<time>`` with ``source=.``),
    it is removed with the folders above it it left empty, up to the source: the refused run leaves the source as
    it found it. A folder the user named is left alone."""
    s = _source_holding(sources, run_dir)
    if s is not None:
        source = Path(s).expanduser()
        if _hydra_made(run_dir):
            try:
                if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= _BOOKKEEPING:
                    shutil.rmtree(run_dir)
                    top, up = source.resolve(), run_dir.resolve().parent
                    while up != top and up.is_relative_to(top) and not any(up.iterdir()):
                        up.rmdir()
                        up = up.parent
            except OSError:  # a folder another process is filling, a permission: the line below still tells
                pass
        raise UserError(
            f"{run_dir}: the run dir is inside source {s} (nothing is written into a source); choose another "
            "run dir (hydra.run.dir=../sigdet-predict on the command line, run_dir= in Python)"
        )


def read_done(path: Path) -> set[str]:
    """The pages ``pages.jsonl`` already holds; a torn last line (a kill mid-write) is cut off the file."""
    done: set[str] = set()
    if not path.is_file():
        return done
    good = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                row = json.loads(raw)
                done.add(f"{row['file']}#{row.get('page') or 0}")
            except (json.JSONDecodeError, KeyError, TypeError):
                break
            good += len(raw)
    if good != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def _state(cfg) -> dict:
    """What a resumed run must share with the run it continues: the sources as given (pages.jsonl names files as
    they were found from them; ``big/`` and ``big`` find the same paths, so they are one source), the shard and the
    checkpoint (as resolved: naming the shipped model is not naming another one)."""
    return {
        "sources": [s if _is_glob(s) else str(Path(s)) for s in _sources(cfg)],
        "shard": None if cfg.shard is None else str(cfg.shard),
        "checkpoint": str(resolve_checkpoint(cfg.checkpoint).resolve()),
    }


def _normal_state(old: dict) -> dict:
    """A stored state as :func:`_state` writes it now (a run started before sources and checkpoints were
    normalised resumes as well); a checkpoint that no longer resolves stays as stored."""
    sources = [s if _is_glob(s) else str(Path(s)) for s in old.get("sources") or []]
    try:
        checkpoint = str(resolve_checkpoint(old.get("checkpoint")).resolve())
    except UserError:
        checkpoint = old.get("checkpoint")
    return old | {"sources": sources, "checkpoint": checkpoint}


def _check_resume(run_dir: Path, state: dict, resume: bool) -> None:
    path = run_dir / STATE
    from training.runfiles import refuse_held_run

    refuse_held_run(run_dir, resumable=(PAGES, "predictions.json"))  # a training run, an export, an audit
    if resume and _hydra_made(run_dir):
        raise UserError(
            "resume=true continues the run in hydra.run.dir: name that folder (hydra.run.dir=outputs/predict/<run>)"
        )
    if not resume or not path.is_file():  # a fresh run (resume=true with no run to continue is one too)
        held = _held_output(run_dir)
        if held == PAGES and not resume:
            raise UserError(
                f"{run_dir} already holds {PAGES}; add resume=true to continue it, or choose another hydra.run.dir"
            )
        if held is not None:
            raise UserError(
                f"{run_dir} already holds {held}, which a run writes; choose another hydra.run.dir (nothing is "
                "overwritten)"
            )
        return
    old = _normal_state(json_object(path))
    for key in ("sources", "shard", "checkpoint"):
        if old.get(key) != state[key]:
            raise UserError(
                f"{path}: resume=true on a run of another {key} ({old.get(key)!r}, now {state[key]!r}); "
                "choose another hydra.run.dir"
            )


def predict_sources(cfg: DictConfig, run_dir: Path) -> dict:
    """Predict every page of ``cfg.source`` into ``run_dir`` (pages.jsonl as it goes, then the tables); the
    summary."""
    _check_values(cfg)  # its booleans before `resume` is read
    sources = _sources(cfg)
    _refuse_run_dir_inside_source(sources, run_dir)
    shard = parse_shard(cfg.shard)
    found, skipped = collect(sources)
    # a glob can reach this run's own outputs: never predict what this run writes
    found = [(f, r) for f, r in found if not _inside(f, run_dir)]
    found = [(f, r) for f, r in found if in_shard(f, r, shard)]
    state = _state(cfg)
    _check_resume(run_dir, state, cfg.resume)  # before anything is loaded or written
    fresh = not any((run_dir / name).exists() for name in OUTPUTS)
    try:
        return _predict_into(cfg, run_dir, sources, shard, found, skipped, state)
    except UserError:
        if (
            fresh
        ):  # a run refused on its way (nothing readable, a bad checkpoint): no half-written folder stays
            _discard_outputs(run_dir)
        raise


def _discard_outputs(run_dir: Path) -> None:
    for name in OUTPUTS:
        path = run_dir / name
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def _predict_into(cfg, run_dir: Path, sources, shard, found, skipped, state) -> dict:
    save_config(cfg, run_dir)
    predictor = Predictor.from_config(cfg, run_dir)
    if (
        (run_dir / STATE).is_file()
        and cfg.resume
        and json_object(run_dir / STATE).get("conf") != predictor.conf
    ):
        raise UserError(
            f"{run_dir / STATE}: resume=true with another operating confidence; choose another hydra.run.dir"
        )
    (run_dir / STATE).write_text(json.dumps(state | {"conf": predictor.conf}, indent=1), encoding="utf-8")
    todo, unreadable = pages(found, predictor.password)
    skipped += unreadable
    empty_shard = shard is not None and not found
    if not todo and not (run_dir / PAGES).exists() and not empty_shard:
        raise UserError(f"source={','.join(sources)}: nothing to predict ({_skip_text(skipped)})")
    done = read_done(run_dir / PAGES)
    left = [p for p in todo if p.key not in done]
    names = predictor.class_names
    for sub in ("annotated", "crops"):
        if cfg.save[sub]:
            (run_dir / sub).mkdir(parents=True, exist_ok=True)

    bar = progress(desc="predict", total=len(left), unit="page")
    with open(run_dir / PAGES, "a", encoding="utf-8") as out:
        for result, arr, det in predictor.stream(left, skipped):
            row = result.to_json()  # with the files saved for this page, by their path in the run dir
            for k, ((x0, y0, x1, y1), lab) in enumerate(zip(det.boxes, det.labels, strict=True)):
                if cfg.save.crops:
                    # class names come with the model (its metadata): never a path of their own
                    folder = run_dir / "crops" / folder_name(names[int(lab)], f"class_{int(lab)}")
                    folder.mkdir(exist_ok=True)
                    crop = arr[max(0, int(y0)) : int(np.ceil(y1)), max(0, int(x0)) : int(np.ceil(x1))]
                    if crop.size:
                        Image.fromarray(crop).save(folder / f"{result.name}_{k}.png")
                        row.setdefault("crops", []).append(f"crops/{folder.name}/{result.name}_{k}.png")
            if cfg.save.annotated:
                draw(arr, det, names).save(run_dir / "annotated" / f"{result.name}.png")
                row["annotated"] = f"annotated/{result.name}.png"
            # one line per page, flushed: a kill loses at most the page in flight (resume=true redoes it)
            out.write(json.dumps(row) + "\n")
            out.flush()
            bar.update(1)
    bar.close()
    summary = write_tables(run_dir, names, bool(cfg.save.csv), skipped)
    if empty_shard:  # more jobs than files: this one has none, which is not a failure of the job array
        print(f"shard {cfg.shard}: no file of this source falls in it; empty tables written")
    elif not summary["n_pages"]:
        raise UserError(f"source={','.join(sources)}: no page could be read ({_skip_text(skipped)})")
    summary |= {
        "checkpoint": str(predictor.checkpoint),
        "conf": predictor.conf,
        "conf_source": predictor.conf_source,
        "shard": state["shard"],
        "skipped": [{"path": p, "why": why} for p, why in dict.fromkeys(skipped)],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    os.replace(run_dir / PART, run_dir / "predictions.json")  # the run is finished
    return summary


def _rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def write_tables(run_dir: Path, names: list[str], with_csv: bool, skipped=()) -> dict:
    """predictions.json (COCO results), predictions.csv and documents.csv from pages.jsonl, streamed; the
    counts of the summary. ``skipped``: ``(path, why)`` of what could not be read; a file of which no page read
    gets its row too, and a file with pages that did not read says which: its answer is then "unknown" unless a
    page that did read is signed (a page never read is not "not signed")."""
    unread: dict[str, list[str]] = {}
    for path, why in lost_pages(list(dict.fromkeys(skipped))):
        unread.setdefault(path, []).append(why)
    docs: dict[str, dict] = {}
    n_pages = n_boxes = n_signed = 0
    cat = {n: i for i, n in enumerate(names)}
    # written under temporary names, renamed when whole; predictions.json, the mark of a finished run, last of all
    # (predict_sources renames it after summary.json): a kill here leaves a run that resume=true finishes
    with (
        open(run_dir / PART, "w", encoding="utf-8") as pj,
        open(run_dir / "predictions.csv.part", "w", newline="", encoding="utf-8", errors="surrogateescape")
        if with_csv
        else open(os.devnull, "w") as pc,
    ):
        w = csv.writer(pc)
        w.writerow(["file", "page", "image_id", "class", "score", "x0", "y0", "x1", "y1"])
        pj.write("[")
        for image_id, row in enumerate(_rows(run_dir / PAGES), 1):
            n_pages += 1
            n_signed += bool(row["signed"])
            for (x0, y0, x1, y1), s, lab in zip(row["boxes"], row["scores"], row["labels"], strict=True):
                res = {
                    "image_id": image_id,
                    "category_id": cat.get(lab, -1),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": s,
                    "category_name": lab,
                    "file_name": row["file"],
                } | ({"page": row["page"]} if row["page"] else {})
                pj.write(("," if n_boxes else "") + json.dumps(res))
                n_boxes += 1
                w.writerow(
                    [row["file"], row["page"] or "", image_id, lab, f"{s:.6f}"]
                    + [f"{v:.2f}" for v in (x0, y0, x1, y1)]
                )
            d = docs.setdefault(row["file"], {"pages": 0, "signed_pages": [], "boxes": 0, "best_score": 0.0})
            d["pages"] += 1
            d["boxes"] += len(row["scores"])
            d["best_score"] = max(d["best_score"], float(row["best_score"]))
            if row["signed"]:
                d["signed_pages"].append(row["page"] or 1)
        pj.write("]")
    if with_csv:
        os.replace(run_dir / "predictions.csv.part", run_dir / "predictions.csv")
    with open(
        run_dir / "documents.csv.part", "w", newline="", encoding="utf-8", errors="surrogateescape"
    ) as f:
        w = csv.writer(f)
        w.writerow(["file", "pages", "signed", "signed_pages", "boxes", "best_score", "unreadable"])
        for file, d in docs.items():
            signed_pages = " ".join(str(p) for p in sorted(d["signed_pages"]))
            answer = "yes" if d["signed_pages"] else ("unknown" if file in unread else "no")
            w.writerow(
                [
                    file,
                    d["pages"],
                    answer,
                    signed_pages,
                    d["boxes"],
                    f"{d['best_score']:.4f}",
                    "; ".join(unread.get(file, [])),
                ]
            )
        for file in sorted(set(unread) - set(docs)):  # no page of it read
            if not Path(file).is_dir():
                w.writerow([file, 0, "unknown", "", 0, "", "; ".join(unread[file])])
    os.replace(run_dir / "documents.csv.part", run_dir / "documents.csv")
    return {
        "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
        "n_pages": n_pages,
        "n_signed_pages": n_signed,
        "n_detections": n_boxes,
        "n_documents": len(docs) + sum(1 for f in unread if f not in docs and not Path(f).is_dir()),
        "n_signed_documents": sum(1 for d in docs.values() if d["signed_pages"]),
        # files whose answer is "unknown" in documents.csv: pages unread and none of the read ones signed
        "n_unknown_documents": sum(
            1 for f in unread if not Path(f).is_dir() and not (f in docs and docs[f]["signed_pages"])
        ),
    }


def _skip_text(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return "no images or PDFs found"
    first = f"{skipped[0][0]}: {skipped[0][1]}"
    return f"{len(skipped)} skipped, first: {first}" if len(skipped) > 1 else first


def run_predict(cfg: DictConfig) -> tuple[Path, dict]:
    """The command's work: a run folder (made here) with pages.jsonl and the tables; ``(run dir, summary)``."""
    from training.cli import require

    require(cfg, "source", usage="source=IMAGE|FOLDER|GLOB|PDF [checkpoint=RUN_OR_EXPORT]")
    run_dir = run_dir_of(cfg)
    _refuse_run_dir_inside_source(_sources(cfg), run_dir)  # before the folder is made (the Python API's)
    if (run_dir / "predictions.json").exists():
        raise UserError(f"{run_dir} already holds predictions.json; choose another hydra.run.dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, predict_sources(cfg, run_dir)


@cli("predict")
def main(cfg: DictConfig) -> None:
    run_dir, summary = run_predict(cfg)
    for skip in summary["skipped"]:
        print(f"skipped {skip['path']}: {skip['why']}")
    n_skip = len(summary["skipped"])
    print(
        f"{summary['n_signed_pages']} of {summary['n_pages']} pages signed"
        f" ({summary['n_signed_documents']} of {summary['n_documents']} files"
        + (
            f"; {summary['n_unknown_documents']} unknown, unreadable"
            if summary["n_unknown_documents"]
            else ""
        )
        + f"), {summary['n_detections']} boxes"
        f" at conf {summary['conf']:.3f} [{summary['conf_source']}]"
        + (f", {n_skip} skipped" if n_skip else "")
        + f" -> {run_dir / PAGES}, {run_dir / 'documents.csv'}"
    )


if __name__ == "__main__":
    main()
